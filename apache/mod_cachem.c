/*
 * mod_cachem - a crash-safe shared-memory cache for Apache httpd 2.4
 * modules, on the cachem C ABI (libcachem.a, cachem.h).
 *
 * The parent creates (or, at a graceful restart, keeps) one region in its
 * real post_config pass; children attach in child_init and purge their
 * process-scoped records in a child-pool cleanup; the parent's monitor hook
 * reaps the records of children that died without cleaning up (SIGKILL,
 * crash). Other modules use the cache through the APR optional functions
 * declared in mod_cachem.h. See docs/apache.md.
 *
 * Life-cycle notes (measured on Debian's httpd 2.4, docs/apache.md):
 * - post_config runs twice at start; the first pass is a dry run
 *   (AP_SQ_MS_CREATE_PRE_CONFIG) after which httpd unloads and reloads the
 *   module. Nothing is done in the dry run.
 * - In the real pass the module pins itself in memory (dlopen with
 *   RTLD_NODELETE), so the cleanups it registers on the process pool (save
 *   at a clean stop, close) never jump into unloaded code (seed 003's first
 *   problem), and the Rust library's state survives graceful restarts.
 * - The parent's state lives in userdata on s->process->pool, so a graceful
 *   restart keeps the region (and its owner ids) while a fresh start makes
 *   a new one (the seed: "each server startup ... erases any DBM
 *   information").
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_main.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "unixd.h"
#include "mod_status.h"
#include "mod_unixd.h"
#include "ap_listen.h"

#include "apr_strings.h"
#include "apr_optional.h"
#include "apr_file_info.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cachem.h"
#include "mod_cachem.h"

module AP_MODULE_DECLARE_DATA cachem_module;

APLOG_USE_MODULE(cachem);

/* Default region size when CACHEM's size is NULL (or CACHEM is absent). */
#define CACHEM_DEFAULT_SIZE (256 * 1024)
#define CACHEM_DEFAULT_REAP_INTERVAL 5
#define CACHEM_STATE_KEY "mod_cachem.state"

/* ------------------------------------------------------------------ */
/* Configuration (global server config only)                          */

typedef struct {
    const char *path;      /* NULL: anonymous */
    apr_uint64_t size;
    const char *lock_file; /* NULL: default */
    const char *dbm;       /* NULL: default */
    const char *persist;   /* NULL: off */
    int reap;              /* cachem_reap_t */
    int compaction;        /* cachem_compaction_t */
    int reap_interval;     /* seconds, 0 = off */
    apr_uint32_t mode;
} cachem_cfg;

static void *create_server_config(apr_pool_t *p, server_rec *s)
{
    cachem_cfg *c = apr_pcalloc(p, sizeof(*c));
    (void)s;
    c->path = NULL;
    c->size = CACHEM_DEFAULT_SIZE;
    c->reap = CACHEM_REAP_PROCESS;
    c->compaction = CACHEM_COMPACTION_DEFERRED;
    c->reap_interval = CACHEM_DEFAULT_REAP_INTERVAL;
    c->mode = 0600;
    return c;
}

static cachem_cfg *server_cfg(server_rec *s)
{
    return ap_get_module_config(s->module_config, &cachem_module);
}

static const char *global_only(cmd_parms *cmd)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    if (err)
        return err;
    if (cmd->server->is_virtual)
        return apr_pstrcat(cmd->pool, cmd->cmd->name,
                           " is only valid in the global server configuration", NULL);
    return NULL;
}

static const char *check_path(cmd_parms *cmd, const char *arg, int absolute)
{
    if (!*arg)
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": empty path", NULL);
    if (absolute && arg[0] != '/')
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg,
                           "' is not an absolute path", NULL);
    if (arg[strlen(arg) - 1] == '/')
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg,
                           "' names a directory, not a file", NULL);
    return NULL;
}

static const char *set_cachem(cmd_parms *cmd, void *dummy, const char *path, const char *size)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    (void)dummy;
    if (err)
        return err;
    if (strcasecmp(path, "NULL") == 0) {
        c->path = NULL;
    }
    else {
        if ((err = check_path(cmd, path, 0)))
            return err;
        c->path = path;
    }
    if (strcasecmp(size, "NULL") == 0) {
        c->size = CACHEM_DEFAULT_SIZE;
    }
    else {
        char *end = NULL;
        apr_int64_t v;
        long page = sysconf(_SC_PAGESIZE);
        errno = 0;
        v = apr_strtoi64(size, &end, 10);
        if (errno || end == size || v <= 0)
            return apr_pstrcat(cmd->pool, cmd->cmd->name, ": size '", size,
                               "' is not a positive number of bytes (or NULL)", NULL);
        {
            /* The unit is checked against the bound before multiplying: no
             * overflow (undefined in C) can wrap a huge size to a small one. */
            apr_int64_t unit = 1;
            if (*end == 'k' || *end == 'K')
                unit = 1024;
            else if (*end == 'm' || *end == 'M')
                unit = 1024 * 1024;
            else if (*end == 'g' || *end == 'G')
                unit = 1024 * 1024 * 1024;
            if (unit > 1)
                end++;
            if (v > ((apr_int64_t)1 << 40) / unit)
                return apr_pstrcat(cmd->pool, cmd->cmd->name, ": size '", size,
                                   "' is larger than 1 TiB", NULL);
            v *= unit;
        }
        if (*end || v <= 0 || v > ((apr_int64_t)1 << 40))
            return apr_pstrcat(cmd->pool, cmd->cmd->name, ": size '", size,
                               "' is not a number of bytes (suffix K, M or G allowed)", NULL);
        if (v % 8)
            return apr_psprintf(cmd->pool, "%s: size %s is not a multiple of 8",
                                cmd->cmd->name, size);
        if (page > 0 && v < page)
            return apr_psprintf(cmd->pool, "%s: size %s is below a page (%ld bytes)",
                                cmd->cmd->name, size, page);
        c->size = (apr_uint64_t)v;
    }
    return NULL;
}

/* CACHEMlockFile and CACHEMDBM: an absolute path, stored in the field of
 * cachem_cfg at the offset the directive's table entry gives. */
static const char *set_abs_path(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    (void)dummy;
    if (err || (err = check_path(cmd, arg, 1)))
        return err;
    *(const char **)((char *)c + (apr_size_t)cmd->info) = arg;
    return NULL;
}

static const char *set_persist(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    (void)dummy;
    if (err)
        return err;
    if (strcasecmp(arg, "off") == 0 || strcasecmp(arg, "none") == 0) {
        c->persist = NULL;
        return NULL;
    }
    if ((err = check_path(cmd, arg, 0)))
        return err;
    c->persist = arg;
    return NULL;
}

/* One keyword of a fixed list: sets *out to its value, or says which
 * keywords the directive takes. */
typedef struct {
    const char *word;
    int value;
} keyword;

static const char *set_keyword(cmd_parms *cmd, const char *arg, const keyword *k, int n, int *out)
{
    const char *err = global_only(cmd);
    const char *all = "";
    int i;
    if (err)
        return err;
    for (i = 0; i < n; i++) {
        if (strcasecmp(arg, k[i].word) == 0) {
            *out = k[i].value;
            return NULL;
        }
        all = apr_pstrcat(cmd->pool, all, i ? ", " : "", k[i].word, NULL);
    }
    return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg, "' is not one of ", all, NULL);
}

static const char *set_reap(cmd_parms *cmd, void *dummy, const char *arg)
{
    static const keyword k[] = {
        {"all", CACHEM_REAP_ALL}, {"process", CACHEM_REAP_PROCESS}, {"off", CACHEM_REAP_OFF}};
    (void)dummy;
    return set_keyword(cmd, arg, k, 3, &server_cfg(cmd->server)->reap);
}

static const char *set_compaction(cmd_parms *cmd, void *dummy, const char *arg)
{
    static const keyword k[] = {
        {"deferred", CACHEM_COMPACTION_DEFERRED}, {"eager", CACHEM_COMPACTION_EAGER}};
    (void)dummy;
    return set_keyword(cmd, arg, k, 2, &server_cfg(cmd->server)->compaction);
}

static const char *set_reap_interval(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    char *end = NULL;
    apr_int64_t v;
    (void)dummy;
    if (err)
        return err;
    errno = 0;
    v = apr_strtoi64(arg, &end, 10);
    if (errno || end == arg || *end || v < 0 || v > 86400)
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg,
                           "' is not a number of seconds from 0 (off) to 86400", NULL);
    c->reap_interval = (int)v;
    return NULL;
}

static const char *set_mode(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    char *end = NULL;
    apr_int64_t v;
    (void)dummy;
    if (err)
        return err;
    errno = 0;
    v = apr_strtoi64(arg, &end, 8);
    if (errno || end == arg || *end || v < 0 || v > 0777)
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg,
                           "' is not an octal file mode (0600, 0660, ...)", NULL);
    if ((v & 0600) != 0600)
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": mode ", arg,
                           " must give the owner read and write (0600)", NULL);
    c->mode = (apr_uint32_t)v;
    return NULL;
}

static const command_rec cachem_cmds[] = {
    AP_INIT_TAKE2("CACHEM", set_cachem, NULL, RSRC_CONF,
                  "CACHEM path|NULL size|NULL: the region (NULL path = anonymous; "
                  "NULL size = 256K; size a multiple of 8, at least a page)"),
    AP_INIT_TAKE1("CACHEMlockFile", set_abs_path, (void *)APR_OFFSETOF(cachem_cfg, lock_file), RSRC_CONF,
                  "absolute path of the global lockfile (default <region>.lock)"),
    AP_INIT_TAKE1("CACHEMDBM", set_abs_path, (void *)APR_OFFSETOF(cachem_cfg, dbm), RSRC_CONF,
                  "absolute path of the owner-id store (default <region>.ids)"),
    AP_INIT_TAKE1("CACHEMPersist", set_persist, NULL, RSRC_CONF,
                  "snapshot file: saved at a clean stop, restored at start (default off)"),
    AP_INIT_TAKE1("CACHEMReap", set_reap, NULL, RSRC_CONF,
                  "all|process|off: which records of dead processes are reaped (default process)"),
    AP_INIT_TAKE1("CACHEMCompaction", set_compaction, NULL, RSRC_CONF,
                  "deferred|eager: how deleted records' space is reclaimed (default deferred)"),
    AP_INIT_TAKE1("CACHEMReapInterval", set_reap_interval, NULL, RSRC_CONF,
                  "seconds between reaps by the parent (default 5, 0 = off)"),
    AP_INIT_TAKE1("CACHEMMode", set_mode, NULL, RSRC_CONF,
                  "octal permission bits of the region, lockfile and id store (default 0600)"),
    {NULL}
};

/* ------------------------------------------------------------------ */
/* Process state                                                      */

/* The parent's state, in userdata on s->process->pool: survives graceful
 * restarts (pconf is cleared, the process pool is not). Strings are
 * allocated from the process pool. */
typedef struct {
    cachem_t *cache;        /* the parent's handle (children inherit it) */
    const char *path;       /* resolved region path, NULL: anonymous */
    apr_uint64_t size;
    const char *lock_file;  /* resolved */
    const char *dbm;        /* resolved */
    const char *dir;        /* DefaultRuntimeDir */
    const char *persist;    /* resolved, NULL: off */
    int reap;
    int compaction;
    apr_uint32_t mode;
    apr_int64_t uid, gid;   /* owner given to the files, -1: unchanged */
    pid_t parent_pid;
    apr_time_t last_reap;
    unsigned long starts;   /* real post_config passes (start + restarts) */
    pid_t reaper_pid;       /* the reaper process, 0: none */
    int cleanup_registered;
} cachem_state;

/* This process's view. In the parent: the state's handle; in a child: its
 * own attached handle (named region) or the inherited one (anonymous). */
static cachem_state *g_state;
static cachem_t *g_cache;
static server_rec *g_server;
static int g_reap_interval = CACHEM_DEFAULT_REAP_INTERVAL;
static int g_own_child_handle;
static void stop_reaper(cachem_state *st);
static __thread int t_locked;
/* The request this thread is serving (set by post_read_request), and the
 * one it was serving when it took the lock: a consumer module that returns
 * from its handler holding the lock would hang every other process and
 * thread, so the module releases such a lock (see release_leaked_lock). */
static __thread request_rec *t_request;
static __thread request_rec *t_lock_request;

static apr_status_t as_status(cachem_error_t e)
{
    return e == CACHEM_OK ? APR_SUCCESS : AP_CACHEM_STATUS((int)e);
}

static const char *detail(void)
{
    const char *d = cachem_last_error_message(g_cache);
    return (d && *d) ? d : "no detail";
}

/* Logs a failed cachem call: what was asked (with the index), the reason
 * and the library's detail. Returns the status. */
static apr_status_t fail(cachem_error_t e, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static apr_status_t fail(cachem_error_t e, int level, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    apr_vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    ap_log_error(APLOG_MARK, level, 0, g_server, "mod_cachem: %s failed: %s (%s)", what,
                 cachem_strerror(e), detail());
    return as_status(e);
}

static apr_status_t not_ready(const char *what)
{
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, g_server,
                 "mod_cachem: %s: the cache is not available in this process "
                 "(see the errors logged at start)", what);
    return APR_ENOTIMPL;
}

/* ------------------------------------------------------------------ */
/* The API for other modules (APR optional functions)                 */

static apr_status_t mod_cachem_handler_init(request_rec *r)
{
    (void)r;
    if (!g_cache)
        return not_ready("cachem_handler_init");
    return APR_SUCCESS;
}

static ap_cachem_id_t mod_cachem_id(const char *s, apr_pool_t *p)
{
    cachem_id_t id = CACHEM_INVALID_ID;
    cachem_error_t e;
    (void)p;
    if (!g_cache) {
        not_ready("cachem_id");
        return AP_CACHEM_INVALID_ID;
    }
    e = cachem_id(g_cache, s, &id);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "cachem_id(%s)", s ? s : "NULL");
        return AP_CACHEM_INVALID_ID;
    }
    return (ap_cachem_id_t)id;
}

static apr_status_t mod_cachem_lock(void)
{
    cachem_error_t e;
    if (!g_cache)
        return not_ready("cachem_lock");
    e = cachem_lock(g_cache);
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_lock");
    t_locked = 1;
    t_lock_request = t_request;
    return APR_SUCCESS;
}

static apr_status_t mod_cachem_unlock(void)
{
    cachem_error_t e;
    if (!g_cache)
        return not_ready("cachem_unlock");
    e = cachem_unlock(g_cache);
    t_locked = 0;
    t_lock_request = NULL;
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_unlock");
    return APR_SUCCESS;
}

static ap_cachem_index_t mod_cachem_add(const void *data, apr_size_t len, ap_cachem_id_t id)
{
    cachem_index_t out = CACHEM_INVALID_INDEX;
    cachem_error_t e;
    if (!g_cache) {
        not_ready("cachem_add");
        return AP_CACHEM_INVALID_INDEX;
    }
    e = cachem_add(g_cache, data, len, id, &out);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "cachem_add(%" APR_SIZE_T_FMT " bytes, owner %u)", len, id);
        return AP_CACHEM_INVALID_INDEX;
    }
    return (ap_cachem_index_t)out;
}

static void *mod_cachem_get(ap_cachem_index_t index, apr_size_t *len)
{
    void *ptr = NULL;
    size_t l = 0;
    cachem_error_t e;
    if (len)
        *len = 0;
    if (!g_cache) {
        not_ready("cachem_get");
        return NULL;
    }
    e = cachem_get(g_cache, index, &ptr, &l);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "cachem_get(index 0x%" APR_UINT64_T_HEX_FMT ")", index);
        return NULL;
    }
    if (len)
        *len = l;
    return ptr;
}

/* cachem_get_id and cachem_get_pid: the next record of an owner (of this
 * process, for get_pid) after `after`, or AP_CACHEM_INVALID_INDEX. */
static ap_cachem_index_t next_index(const char *what,
                                    cachem_error_t (*next)(cachem_t *, cachem_id_t, cachem_index_t,
                                                           cachem_index_t *),
                                    ap_cachem_id_t id, ap_cachem_index_t after)
{
    cachem_index_t out = CACHEM_INVALID_INDEX;
    cachem_error_t e;
    if (!g_cache) {
        not_ready(what);
        return AP_CACHEM_INVALID_INDEX;
    }
    e = next(g_cache, id, after, &out);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "%s(owner %u, after index 0x%" APR_UINT64_T_HEX_FMT ")", what, id,
             after);
        return AP_CACHEM_INVALID_INDEX;
    }
    return (ap_cachem_index_t)out;
}

static ap_cachem_index_t mod_cachem_get_id(ap_cachem_id_t id, ap_cachem_index_t after)
{
    return next_index("cachem_get_id", cachem_get_id, id, after);
}

static ap_cachem_index_t mod_cachem_get_pid(ap_cachem_id_t id, ap_cachem_index_t after)
{
    return next_index("cachem_get_pid", cachem_get_pid, id, after);
}

static apr_status_t mod_cachem_delete(ap_cachem_index_t index, int flags)
{
    cachem_error_t e;
    if (!g_cache)
        return not_ready("cachem_delete");
    if ((flags & AP_CACHEM_NOLOCKING) && !t_locked)
        return fail(CACHEM_E_NOT_LOCKED, APLOG_ERR,
                    "cachem_delete(index 0x%" APR_UINT64_T_HEX_FMT
                    ", CACHEM_NOLOCKING) without the lock", index);
    e = cachem_delete(g_cache, index);
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_delete(index 0x%" APR_UINT64_T_HEX_FMT ")", index);
    return APR_SUCCESS;
}

static apr_status_t mod_cachem_delete_pid(ap_cachem_id_t id, apr_size_t *removed)
{
    size_t n = 0;
    cachem_error_t e;
    if (removed)
        *removed = 0;
    if (!g_cache)
        return not_ready("cachem_delete_pid");
    e = cachem_delete_pid(g_cache, id, &n);
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_delete_pid(owner %u)", id);
    if (removed)
        *removed = n;
    return APR_SUCCESS;
}

static apr_status_t mod_cachem_read(ap_cachem_index_t index, void *buf, apr_size_t len,
                            apr_size_t *out_len)
{
    size_t n = 0;
    cachem_error_t e;
    if (out_len)
        *out_len = 0;
    if (!g_cache)
        return not_ready("cachem_read");
    e = cachem_read(g_cache, index, buf, len, &n);
    if (out_len)
        *out_len = n;
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_read(index 0x%" APR_UINT64_T_HEX_FMT ", %"
                    APR_SIZE_T_FMT " bytes)", index, len);
    return APR_SUCCESS;
}

static const char *mod_cachem_strerror(apr_status_t status)
{
    if (status == APR_SUCCESS)
        return "success";
    if (status == APR_ENOTIMPL)
        return "the cache is not available in this process";
    if (AP_CACHEM_IS_STATUS(status))
        return cachem_strerror((cachem_error_t)(status - AP_CACHEM_ERRSPACE));
    return "not a mod_cachem status";
}

/* ------------------------------------------------------------------ */
/* Life-cycle                                                         */

/* Keeps this module's code mapped for the life of the process: the
 * process-pool cleanups below run after httpd has "unloaded" the module
 * at a stop, and the Rust library keeps process-wide state. */
static void pin_module(server_rec *s)
{
    Dl_info info;
    if (dladdr((void *)&cachem_module, &info) && info.dli_fname) {
        void *h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        if (!h)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "mod_cachem: cannot pin %s in memory: %s", info.dli_fname, dlerror());
        /* The reference is kept on purpose. */
    }
}

static void fill_options(const cachem_state *st, cachem_options_t *o)
{
    cachem_options_t init = CACHEM_OPTIONS_INIT;
    *o = init;
    o->mode = st->mode;
    o->owner_uid = st->uid;
    o->owner_gid = st->gid;
    o->dir = st->dir;
    o->lock_file = st->lock_file;
    o->id_store = st->dbm;
    o->reap = (uint32_t)st->reap;
    o->compaction = (uint32_t)st->compaction;
}

/* Pre-creates a file or directory the children (another user) must be able
 * to use, with the mode and owner the region gets. Best effort; failures
 * show up, logged, when the children use them. */
static void prepare_path(server_rec *s, const char *path, int dir, const cachem_state *st)
{
    int fd;
    /* Never through a symlink at the last component: the directory may be
     * writable by the children's user, and root must not create or chown
     * a file a link points to. */
    if (dir) {
        if (mkdir(path, 0700 | ((st->mode & 0070) ? 0070 : 0)) != 0 && errno != EEXIST) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "mod_cachem: cannot create %s", path);
            return;
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    else
        fd = open(path, O_CREAT | O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, st->mode);
    if (fd < 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "mod_cachem: cannot create or open %s (a symlink is refused)", path);
        return;
    }
    if ((st->uid >= 0 || st->gid >= 0) && fchown(fd, (uid_t)st->uid, (gid_t)st->gid) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "mod_cachem: cannot give %s to uid %" APR_INT64_T_FMT, path, st->uid);
    close(fd);
}

/* Gives name (relative to the directory at) and, for a directory,
 * everything below it to the children's user. Walks by descriptors and
 * never follows a symlink, so a user who can write inside the tree cannot
 * swap a directory for a link and have root chown what it points to. */
static void chown_at(server_rec *s, int at, const char *name, const cachem_state *st, int depth)
{
    struct stat sb;
    int fd = openat(at, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return; /* gone, or a symlink (ELOOP): leave it */
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return;
    }
    if (fchown(fd, (uid_t)st->uid, (gid_t)st->gid) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "mod_cachem: cannot chown %s", name);
    if (S_ISDIR(sb.st_mode) && depth < 8) {
        DIR *d = fdopendir(fd);
        struct dirent *de;
        if (!d) {
            close(fd);
            return;
        }
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                chown_at(s, dirfd(d), de->d_name, st, depth + 1);
        }
        closedir(d);
        return;
    }
    close(fd);
}

/* Gives a directory tree (the id store) to the children's user: the
 * parent's registry use (CACHEMPersist's restore) creates files as root. */
static void chown_tree(server_rec *s, const char *path, const cachem_state *st, int depth)
{
    if (st->uid < 0 && st->gid < 0)
        return;
    chown_at(s, AT_FDCWD, path, st, depth);
}

/* At the parent's exit (a stop, not a graceful restart): save the records
 * when CACHEMPersist is set, close the handle. Registered on the process
 * pool; the module is pinned, so this code is still mapped. */
static apr_status_t parent_exit(void *data)
{
    cachem_state *st = data;
    if (!st->cache || getpid() != st->parent_pid)
        return APR_SUCCESS;
    stop_reaper(st);
    if (st->persist) {
        cachem_error_t e = cachem_save(st->cache, st->persist);
        if (e != CACHEM_OK)
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, NULL,
                         "mod_cachem: saving the records to %s failed: %s (%s)", st->persist,
                         cachem_strerror(e), cachem_last_error_message(st->cache));
        else
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, NULL,
                         "mod_cachem: records saved to %s", st->persist);
    }
    cachem_close(st->cache);
    st->cache = NULL;
    g_cache = NULL;
    return APR_SUCCESS;
}

/* The reaper process. httpd runs the monitor hook only once every ten
 * passes of the MPM's one-second maintenance loop, too coarse for
 * CACHEMReapInterval; so the parent forks one small process that reaps
 * every CACHEMReapInterval seconds (as User, without the listeners) and
 * exits when the parent is gone. It is replaced at every restart and
 * stopped at the parent's exit; the monitor hook remains a fallback. */
static volatile sig_atomic_t reaper_stop;

static void reaper_on_term(int sig)
{
    (void)sig;
    reaper_stop = 1;
}

static void reaper_main(cachem_state *st, server_rec *s, int interval)
{
    static const int ignored[] = {SIGINT, SIGHUP, SIGUSR1, SIGWINCH, SIGQUIT, SIGPIPE};
    sigset_t none;
    apr_time_t next;
    size_t k;
    apr_os_file_t log_fd = -1;
    /* Out of the server's process group: prefork signals the group at stop
     * and restart, and a reaper killed in the middle of a reap would leave
     * the region to a lock recovery. The parent stops it by pid (SIGTERM,
     * honoured between reaps). */
    prctl(PR_SET_NAME, "cachem-reaper", 0, 0, 0);
    setpgid(0, 0);
    for (k = 0; k < sizeof(ignored) / sizeof(ignored[0]); k++)
        signal(ignored[k], SIG_IGN);
    signal(SIGTERM, reaper_on_term);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    ap_close_listeners();
    /* Keep only stdio and the error log: not the MPM's pipe of death, not a
     * piped logger's write end. */
    if (s->error_log)
        apr_os_file_get(&log_fd, s->error_log);
    if (log_fd > 3)
        close_range(3, (unsigned int)log_fd - 1, 0);
    close_range(log_fd >= 3 ? (unsigned int)log_fd + 1 : 3, ~0U, 0);
    if (geteuid() == 0 && ap_unixd_setup_child() != 0)
        _exit(1);
    next = apr_time_now() + apr_time_from_sec(interval);
    for (;;) {
        apr_sleep(apr_time_from_msec(200));
        if (reaper_stop || getppid() != st->parent_pid)
            _exit(0);
        if (apr_time_now() < next)
            continue;
        next = apr_time_now() + apr_time_from_sec(interval);
        {
            cachem_reap_report_t rep;
            cachem_error_t e;
            memset(&rep, 0, sizeof(rep));
            e = cachem_reap(st->cache, &rep);
            if (e != CACHEM_OK)
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, "mod_cachem: reap failed: %s (%s)",
                             cachem_strerror(e), cachem_last_error_message(st->cache));
            else if (rep.records)
                ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                             "mod_cachem: reaped %" APR_UINT64_T_FMT " records of %"
                             APR_UINT64_T_FMT " dead processes", rep.records, rep.processes);
        }
    }
}

static void stop_reaper(cachem_state *st)
{
    int i, status;
    pid_t pid = st->reaper_pid;
    if (pid <= 0)
        return;
    st->reaper_pid = 0;
    kill(pid, SIGTERM);
    /* Bounded: 2 s, then SIGKILL. The MPM may have collected it already
     * (ECHILD). */
    for (i = 0; i < 200; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return;
        apr_sleep(apr_time_from_msec(10));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
}

static void reaper_maintenance(int reason, void *data, apr_wait_t status)
{
    apr_proc_t *proc = data;
    (void)status;
    /* UNREGISTER: pconf is being cleared (a restart); the reaper lives on
     * until post_config replaces it, and APR drops the record itself. */
    if (reason == APR_OC_REASON_DEATH || reason == APR_OC_REASON_LOST) {
        apr_proc_other_child_unregister(data);
        if (g_state && g_state->reaper_pid == proc->pid) {
            g_state->reaper_pid = 0;
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, g_server,
                         "mod_cachem: the reaper process %ld exited; the monitor hook "
                         "reaps every 10 s instead", (long)proc->pid);
        }
    }
}

static void start_reaper(cachem_state *st, server_rec *s, apr_pool_t *pconf, int interval)
{
    apr_proc_t *proc;
    pid_t pid;
    stop_reaper(st);
    if (interval <= 0 || st->reap == CACHEM_REAP_OFF || !st->cache)
        return;
    pid = fork();
    if (pid < 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "mod_cachem: cannot fork the reaper process");
        return;
    }
    if (pid == 0)
        reaper_main(st, s, interval); /* never returns */
    st->reaper_pid = pid;
    proc = apr_pcalloc(pconf, sizeof(*proc));
    proc->pid = pid;
    apr_proc_other_child_register(proc, reaper_maintenance, proc, NULL, pconf);
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int cachem_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                              server_rec *s)
{
    apr_pool_t *pp = s->process->pool;
    cachem_cfg *cfg = server_cfg(s);
    cachem_state *st = NULL;
    cachem_state want;
    cachem_options_t opts;
    const char *carried = NULL; /* snapshot of a region a restart replaced */
    cachem_error_t e = CACHEM_OK;
    (void)plog;

    /* The dry run: touch nothing (no file, no Rust code). */
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;

    pin_module(s);
    g_server = s;
    g_reap_interval = cfg->reap_interval;

    apr_pool_userdata_get((void **)&st, CACHEM_STATE_KEY, pp);
    if (!st) {
        st = apr_pcalloc(pp, sizeof(*st));
        apr_pool_userdata_set(st, CACHEM_STATE_KEY, apr_pool_cleanup_null, pp);
    }
    g_state = st;

    /* Computed in ptemp; what is adopted is copied to the process pool. */
    memset(&want, 0, sizeof(want));
    want.dir = apr_pstrdup(ptemp, ap_runtime_dir_relative(pconf, ""));
    want.path = cfg->path ? apr_pstrdup(ptemp, ap_runtime_dir_relative(pconf, cfg->path)) : NULL;
    want.size = cfg->size;
    if (cfg->lock_file)
        want.lock_file = apr_pstrdup(ptemp, cfg->lock_file);
    else if (want.path)
        want.lock_file = apr_pstrcat(ptemp, want.path, ".lock", NULL);
    else
        want.lock_file = apr_pstrdup(ptemp, ap_runtime_dir_relative(pconf, "mod_cachem-anon.lock"));
    if (cfg->dbm)
        want.dbm = apr_pstrdup(ptemp, cfg->dbm);
    else if (want.path)
        want.dbm = apr_pstrcat(ptemp, want.path, ".ids", NULL);
    else
        want.dbm = apr_pstrdup(ptemp, ap_runtime_dir_relative(pconf, "mod_cachem-anon.ids"));
    want.persist = cfg->persist ? apr_pstrdup(ptemp, ap_runtime_dir_relative(pconf, cfg->persist))
                                : NULL;
    want.reap = cfg->reap;
    want.compaction = cfg->compaction;
    want.mode = cfg->mode;
    want.uid = -1;
    want.gid = -1;
    if (geteuid() == 0) {
        want.uid = (apr_int64_t)ap_unixd_config.user_id;
        want.gid = (apr_int64_t)ap_unixd_config.group_id;
    }

    st->starts++;
    st->parent_pid = getpid();
    /* May change at a restart. */
    st->persist = want.persist ? apr_pstrdup(pp, want.persist) : NULL;

    if (st->cache && same_str(st->path, want.path) && st->size == want.size
        && same_str(st->lock_file, want.lock_file) && same_str(st->dbm, want.dbm)
        && st->reap == want.reap && st->compaction == want.compaction
        && st->mode == want.mode && st->uid == want.uid
        && st->gid == want.gid) {
        /* A graceful restart with the same region: keep it, and its ids. */
        g_cache = st->cache;
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "mod_cachem: restart %lu keeps the region %s", st->starts,
                     st->path ? st->path : "(anonymous)");
        start_reaper(st, s, pconf, cfg->reap_interval);
        return OK;
    }
    if (st->cache) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                     "mod_cachem: the CACHEM configuration changed: making a new region");
        stop_reaper(st);
        /* A graceful restart keeps the records: carry them over to the new
         * region through a snapshot (owned records, with their owners'
         * names), rather than restoring the older CACHEMPersist file. */
        carried = ap_runtime_dir_relative(ptemp, "mod_cachem-restart.snapshot");
        e = cachem_save(st->cache, carried);
        if (e != CACHEM_OK) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                         "mod_cachem: saving the records before the new region failed: %s (%s); "
                         "they are lost", cachem_strerror(e), cachem_last_error_message(st->cache));
            carried = NULL;
        }
        e = cachem_close(st->cache);
        if (e != CACHEM_OK)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, "mod_cachem: closing the old region: %s (%s)",
                         cachem_strerror(e), cachem_last_error_message(NULL));
        st->cache = NULL;
        g_cache = NULL;
    }

    st->path = want.path ? apr_pstrdup(pp, want.path) : NULL;
    st->size = want.size;
    st->lock_file = apr_pstrdup(pp, want.lock_file);
    st->dbm = apr_pstrdup(pp, want.dbm);
    st->dir = apr_pstrdup(pp, want.dir);
    st->reap = want.reap;
    st->compaction = want.compaction;
    st->mode = want.mode;
    st->uid = want.uid;
    st->gid = want.gid;
    fill_options(st, &opts);

    /* A fresh start makes a fresh region and id registry generation. */
    if (st->path) {
        e = cachem_destroy(st->path, &opts);
        if (e == CACHEM_E_INVALID_ARGUMENT) {
            cachem_options_t plain = opts;
            plain.owner_uid = -1;
            plain.owner_gid = -1;
            e = cachem_destroy(st->path, &plain);
        }
        if (e != CACHEM_OK && e != CACHEM_E_NOT_FOUND)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "mod_cachem: removing the old region %s: %s (%s)", st->path,
                         cachem_strerror(e), cachem_last_error_message(NULL));
    }
    /* The children run as User/Group: the lockfile and id store must be
     * theirs before anyone uses them. */
    prepare_path(s, st->lock_file, 0, st);
    prepare_path(s, st->dbm, 1, st);

    st->cache = cachem_open(st->path, st->size, &opts, &e);
    if (!st->cache && e == CACHEM_E_INVALID_ARGUMENT && (st->uid >= 0 || st->gid >= 0)) {
        /* A libcachem without owner support: create, then chown here. */
        opts.owner_uid = -1;
        opts.owner_gid = -1;
        st->cache = cachem_open(st->path, st->size, &opts, &e);
        if (st->cache) {
            if (st->path)
                prepare_path(s, st->path, 0, st);
            prepare_path(s, st->lock_file, 0, st);
            chown_tree(s, st->dbm, st, 0);
        }
    }
    if (!st->cache) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s,
                     "mod_cachem: cannot open the region %s (%" APR_UINT64_T_FMT
                     " bytes): %s (%s)", st->path ? st->path : "(anonymous)", st->size,
                     cachem_strerror(e), cachem_last_error_message(NULL));
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    g_cache = st->cache;
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                 "mod_cachem: region %s (%" APR_UINT64_T_FMT " bytes) created",
                 st->path ? st->path : "(anonymous)", st->size);

    {
        /* The records of the region this restart replaced, else (a fresh
         * start) the CACHEMPersist snapshot of the last clean stop. */
        apr_finfo_t fi;
        const char *from = carried ? carried : st->persist;
        if (from && apr_stat(&fi, from, APR_FINFO_TYPE, ptemp) == APR_SUCCESS) {
            e = cachem_restore(st->cache, from);
            if (e != CACHEM_OK)
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                             "mod_cachem: restoring the records from %s failed: %s (%s)",
                             from, cachem_strerror(e), cachem_last_error_message(st->cache));
            else
                ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                             "mod_cachem: records restored from %s", from);
            chown_tree(s, st->dbm, st, 0);
        }
        if (carried)
            apr_file_remove(carried, ptemp);
    }

    if (!st->cleanup_registered) {
        apr_pool_cleanup_register(pp, st, parent_exit, apr_pool_cleanup_null);
        st->cleanup_registered = 1;
    }
    start_reaper(st, s, pconf, cfg->reap_interval);
    return OK;
}

/* At the child's exit (MaxConnectionsPerChild, graceful restart, stop):
 * purge its process-scoped records. */
static apr_status_t child_exit(void *data)
{
    size_t n = 0;
    cachem_error_t e;
    (void)data;
    if (!g_cache)
        return APR_SUCCESS;
    e = cachem_purge_process(g_cache, &n);
    if (e != CACHEM_OK)
        fail(e, APLOG_WARNING, "purging the records of child %ld", (long)getpid());
    else if (n)
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, g_server,
                     "mod_cachem: child %ld purged %lu process-scoped records",
                     (long)getpid(), (unsigned long)n);
    if (g_own_child_handle) {
        e = cachem_close(g_cache);
        if (e != CACHEM_OK) /* BUSY: a thread still holds the lock */
            fail(e, APLOG_WARNING, "closing the region in child %ld", (long)getpid());
        g_own_child_handle = 0;
    }
    g_cache = NULL;
    return APR_SUCCESS;
}

static void cachem_child_init(apr_pool_t *pchild, server_rec *s)
{
    cachem_state *st = NULL;
    apr_pool_userdata_get((void **)&st, CACHEM_STATE_KEY, s->process->pool);
    g_server = s;
    if (!st || !st->cache) {
        g_cache = NULL;
        return;
    }
    g_state = st;
    g_cache = st->cache;
    g_own_child_handle = 0;
    if (st->path) {
        /* A named region: attach as the child's user (proves the files
         * were given to it); fall back on the inherited mapping. */
        cachem_options_t opts;
        cachem_error_t e = CACHEM_OK;
        cachem_t *c;
        fill_options(st, &opts);
        opts.attach_only = 1;
        opts.attach_any_size = 1;
        opts.owner_uid = -1; /* attaching makes nothing */
        opts.owner_gid = -1;
        c = cachem_open(st->path, st->size, &opts, &e);
        if (c) {
            g_cache = c;
            g_own_child_handle = 1;
        }
        else {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                         "mod_cachem: child %ld cannot attach %s: %s (%s); using the "
                         "inherited mapping", (long)getpid(), st->path, cachem_strerror(e),
                         cachem_last_error_message(NULL));
        }
    }
    apr_pool_cleanup_register(pchild, NULL, child_exit, apr_pool_cleanup_null);
}

/* The parent, about once a second: reap the records of children that died
 * without their cleanup (SIGKILL, crash) every CACHEMReapInterval. */
static int cachem_monitor(apr_pool_t *p, server_rec *s)
{
    cachem_state *st = g_state;
    apr_time_t now;
    (void)p;
    if (!st || !st->cache || getpid() != st->parent_pid || g_reap_interval <= 0
        || st->reap == CACHEM_REAP_OFF || st->reaper_pid > 0)
        return DECLINED; /* the reaper process does it */
    now = apr_time_now();
    if (st->last_reap && now - st->last_reap < apr_time_from_sec(g_reap_interval))
        return DECLINED;
    st->last_reap = now;
    {
        cachem_reap_report_t rep;
        cachem_error_t e;
        memset(&rep, 0, sizeof(rep));
        e = cachem_reap(st->cache, &rep);
        if (e != CACHEM_OK)
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, "mod_cachem: reap failed: %s (%s)",
                         cachem_strerror(e), cachem_last_error_message(st->cache));
        else if (rep.records)
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                         "mod_cachem: reaped %" APR_UINT64_T_FMT " records of %"
                         APR_UINT64_T_FMT " dead processes", rep.records, rep.processes);
    }
    return DECLINED;
}

/* ------------------------------------------------------------------ */
/* mod_status section                                                 */

/* A minimal reader for the flat objects of cachem_status_json: finds
 * "key": in [p, end) and parses what follows. The JSON comes from our
 * own library; still, every read is bounded by end. */
/* The value of "key" among the members of the object that starts at p
 * (depth 1 only, and only a string followed by ':' is a key: an owner named
 * "pids" or a nested object's member never matches). */
static const char *json_key(const char *p, const char *end, const char *key)
{
    size_t kl = strlen(key);
    int depth = 0;
    while (p && p < end) {
        if (*p == '"') {
            const char *q = p + 1, *after;
            while (q < end && *q != '"')
                q += (*q == '\\') ? 2 : 1;
            if (q >= end)
                return NULL;
            after = q + 1;
            while (after < end && (*after == ' ' || *after == '\n' || *after == '\t'))
                after++;
            if (depth == 1 && after < end && *after == ':' && (size_t)(q - p - 1) == kl
                && strncmp(p + 1, key, kl) == 0) {
                after++;
                while (after < end && (*after == ' ' || *after == '\n' || *after == '\t'))
                    after++;
                return after;
            }
            p = q + 1;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        p++;
    }
    return NULL;
}

static apr_uint64_t json_u64(const char *p, const char *end, const char *key)
{
    const char *v = json_key(p, end, key);
    apr_uint64_t n = 0;
    if (!v)
        return 0;
    while (v < end && *v >= '0' && *v <= '9')
        n = n * 10 + (apr_uint64_t)(*v++ - '0');
    return n;
}

static int json_bool(const char *p, const char *end, const char *key)
{
    const char *v = json_key(p, end, key);
    return v && end - v >= 4 && strncmp(v, "true", 4) == 0;
}

/* The string value of key (unescaped only for \" and \\), or NULL. */
static const char *json_str(apr_pool_t *pool, const char *p, const char *end, const char *key)
{
    const char *v = json_key(p, end, key);
    char *out, *o;
    if (!v || v >= end || *v != '"')
        return NULL;
    v++;
    out = o = apr_palloc(pool, (apr_size_t)(end - v) + 1);
    while (v < end && *v != '"') {
        if (*v == '\\' && v + 1 < end)
            v++;
        *o++ = *v++;
    }
    *o = 0;
    return out;
}

/* Calls fn for each {...} of the array "key": [ ... ]. */
static void json_each(const char *json, const char *end, const char *key,
                      void (*fn)(void *, const char *, const char *), void *ctx)
{
    const char *p = json_key(json, end, key);
    int depth = 0;
    const char *start = NULL;
    int in_str = 0;
    if (!p || p >= end || *p != '[')
        return;
    for (p++; p < end; p++) {
        if (in_str) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_str = 0;
            continue;
        }
        if (*p == '"')
            in_str = 1;
        else if (*p == '{') {
            if (depth++ == 0)
                start = p;
        }
        else if (*p == '}') {
            if (--depth == 0 && start)
                fn(ctx, start, p + 1);
        }
        else if (*p == ']' && depth == 0)
            return;
    }
}

typedef struct {
    request_rec *r;
    int short_form;
} status_ctx;

static void status_owner(void *c, const char *p, const char *end)
{
    status_ctx *ctx = c;
    request_rec *r = ctx->r;
    apr_uint64_t id = json_u64(p, end, "id");
    const char *name = json_str(r->pool, p, end, "name");
    if (ctx->short_form)
        ap_rprintf(r, "CachemOwner%" APR_UINT64_T_FMT ": %s %" APR_UINT64_T_FMT " %"
                   APR_UINT64_T_FMT "\n", id,
                   id == 0 ? "(process)" : (name ? name : "(unnamed)"),
                   json_u64(p, end, "records"), json_u64(p, end, "bytes"));
    else
        ap_rprintf(r, "<tr><td>%" APR_UINT64_T_FMT "</td><td>%s</td><td>%" APR_UINT64_T_FMT
                   "</td><td>%" APR_UINT64_T_FMT "</td></tr>\n", id,
                   id == 0 ? "<i>process-scoped</i>"
                           : (name ? ap_escape_html(r->pool, name) : "<i>unnamed</i>"),
                   json_u64(p, end, "records"), json_u64(p, end, "bytes"));
}

static void status_pid(void *c, const char *p, const char *end)
{
    status_ctx *ctx = c;
    request_rec *r = ctx->r;
    int alive = json_bool(p, end, "alive");
    if (ctx->short_form)
        ap_rprintf(r, "CachemPid%" APR_UINT64_T_FMT ": %s %" APR_UINT64_T_FMT " %"
                   APR_UINT64_T_FMT "\n", json_u64(p, end, "pid"), alive ? "alive" : "dead",
                   json_u64(p, end, "records"), json_u64(p, end, "bytes"));
    else
        ap_rprintf(r, "<tr><td>%" APR_UINT64_T_FMT "</td><td>%s</td><td>%" APR_UINT64_T_FMT
                   "</td><td>%" APR_UINT64_T_FMT "</td></tr>\n", json_u64(p, end, "pid"),
                   alive ? "alive" : "<b>dead</b>", json_u64(p, end, "records"),
                   json_u64(p, end, "bytes"));
}

static int cachem_status(request_rec *r, int flags)
{
    cachem_stat_t stt;
    cachem_error_t e;
    char *json = NULL;
    size_t need = 0;
    status_ctx ctx;
    const char *name;

    if (!g_cache) {
        if (!(flags & AP_STATUS_SHORT))
            ap_rputs("<hr />\n<h2>mod_cachem</h2>\n<p>No cache in this process.</p>\n", r);
        else
            ap_rputs("CachemAvailable: 0\n", r);
        return OK;
    }
    memset(&stt, 0, sizeof(stt));
    e = cachem_stat(g_cache, &stt);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "cachem_stat for server-status");
        if (!(flags & AP_STATUS_SHORT))
            ap_rprintf(r, "<hr />\n<h2>mod_cachem</h2>\n<p>Status failed: %s</p>\n",
                       ap_escape_html(r->pool, cachem_strerror(e)));
        else
            ap_rputs("CachemAvailable: 0\n", r);
        return OK;
    }
    e = cachem_status_json(g_cache, NULL, 0, &need);
    {
        /* The text may grow between sizing and filling (records inserted
         * meanwhile): size again, a few times, with some headroom. */
        int tries;
        for (tries = 0; tries < 4 && (e == CACHEM_E_BUFFER_TOO_SMALL || e == CACHEM_OK)
                        && need > 0 && need < (64u << 20); tries++) {
            apr_size_t cap = need + need / 4 + 256;
            json = apr_palloc(r->pool, cap);
            e = cachem_status_json(g_cache, json, cap, &need);
            if (e == CACHEM_OK)
                break;
            json = NULL;
        }
        if (e != CACHEM_OK)
            json = NULL;
    }
    ctx.r = r;
    ctx.short_form = (flags & AP_STATUS_SHORT) != 0;
    name = g_state && g_state->path ? g_state->path : "(anonymous)";

    if (ctx.short_form) {
        ap_rputs("CachemAvailable: 1\n", r);
        ap_rprintf(r, "CachemRegion: %s\n", name);
        ap_rprintf(r, "CachemSize: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.size);
        ap_rprintf(r, "CachemUsedBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.used_bytes);
        ap_rprintf(r, "CachemFreeBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.free_bytes);
        ap_rprintf(r, "CachemRecords: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.records);
        ap_rprintf(r, "CachemSlots: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.slots);
        ap_rprintf(r, "CachemFreeSlots: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.free_slots);
        ap_rprintf(r, "CachemHeaderBytes: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.header_bytes);
        ap_rprintf(r, "CachemTableBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.table_bytes);
        ap_rprintf(r, "CachemGeneration: %016" APR_UINT64_T_HEX_FMT "\n",
                   (apr_uint64_t)stt.generation);
        ap_rprintf(r, "CachemMaxRecordLen: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.max_record_len);
        ap_rprintf(r, "CachemOwners: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.owners);
        ap_rprintf(r, "CachemProcesses: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.processes);
        ap_rprintf(r, "CachemDeadProcesses: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.dead_processes);
        ap_rprintf(r, "CachemInserts: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.inserts);
        ap_rprintf(r, "CachemRemoves: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.removes);
        ap_rprintf(r, "CachemBytesMoved: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.bytes_moved);
        ap_rprintf(r, "CachemReaps: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.reaps);
        ap_rprintf(r, "CachemRecoveries: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.recoveries);
        ap_rprintf(r, "CachemCompaction: %s\n",
                   stt.compaction == CACHEM_COMPACTION_EAGER ? "eager" : "deferred");
        ap_rprintf(r, "CachemDeadBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.dead_bytes);
        ap_rprintf(r, "CachemDeadBlocks: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.dead_blocks);
        if (json) {
            const char *end = json + strlen(json);
            json_each(json, end, "owners", status_owner, &ctx);
            json_each(json, end, "pids", status_pid, &ctx);
        }
        return OK;
    }

    ap_rputs("<hr />\n<h2><a name=\"cachem\">mod_cachem</a></h2>\n", r);
    ap_rprintf(r, "<p>Region <code>%s</code>: %" APR_UINT64_T_FMT " bytes, %"
               APR_UINT64_T_FMT " used, %" APR_UINT64_T_FMT " free; %" APR_UINT64_T_FMT
               " records in %" APR_UINT64_T_FMT " slots; largest record %" APR_UINT64_T_FMT
               " bytes.</p>\n", ap_escape_html(r->pool, name), (apr_uint64_t)stt.size,
               (apr_uint64_t)stt.used_bytes, (apr_uint64_t)stt.free_bytes,
               (apr_uint64_t)stt.records, (apr_uint64_t)stt.slots,
               (apr_uint64_t)stt.max_record_len);
    {
        /* The region picture: | header | blocks -> | free | <- table |. */
        char bar[65];
        int i, hdr, used, freec;
        double sz = stt.size ? (double)stt.size : 1.0;
        hdr = (int)(64.0 * (double)stt.header_bytes / sz + 0.5);
        used = (int)(64.0 * (double)stt.used_bytes / sz + 0.5);
        freec = (int)(64.0 * (double)stt.free_bytes / sz + 0.5);
        if (hdr < 1)
            hdr = 1;
        if (used < 1 && stt.records)
            used = 1;
        if (hdr + used > 64)
            used = 64 - hdr;
        if (hdr + used + freec > 64)
            freec = 64 - hdr - used;
        for (i = 0; i < 64; i++)
            bar[i] = i < hdr ? 'H' : (i < hdr + used ? '#' : (i < hdr + used + freec ? '.' : '='));
        bar[64] = 0;
        ap_rprintf(r, "<pre>|%s|\n H header %" APR_UINT64_T_FMT ", # records %" APR_UINT64_T_FMT
                   ", . free %" APR_UINT64_T_FMT ", = block-pointer table %" APR_UINT64_T_FMT
                   " bytes</pre>\n", bar, (apr_uint64_t)stt.header_bytes,
                   (apr_uint64_t)stt.used_bytes, (apr_uint64_t)stt.free_bytes,
                   (apr_uint64_t)stt.table_bytes);
    }
    ap_rprintf(r, "<p>Compaction %s: %" APR_UINT64_T_FMT " bytes in %" APR_UINT64_T_FMT
               " deleted records' blocks wait for a compaction.</p>\n",
               stt.compaction == CACHEM_COMPACTION_EAGER ? "eager" : "deferred",
               (apr_uint64_t)stt.dead_bytes, (apr_uint64_t)stt.dead_blocks);
    ap_rprintf(r, "<p>Counters: %" APR_UINT64_T_FMT " inserts, %" APR_UINT64_T_FMT
               " removes, %" APR_UINT64_T_FMT " bytes moved by compaction, %"
               APR_UINT64_T_FMT " records reaped, %" APR_UINT64_T_FMT
               " lock recoveries.</p>\n", (apr_uint64_t)stt.inserts, (apr_uint64_t)stt.removes,
               (apr_uint64_t)stt.bytes_moved, (apr_uint64_t)stt.reaps,
               (apr_uint64_t)stt.recoveries);
    if (json) {
        const char *end = json + strlen(json);
        ap_rprintf(r, "<h3>Owners (%" APR_UINT64_T_FMT ")</h3>\n<table border=\"0\">"
                   "<tr><th>id</th><th>name</th><th>records</th><th>bytes</th></tr>\n",
                   (apr_uint64_t)stt.owners);
        json_each(json, end, "owners", status_owner, &ctx);
        ap_rputs("</table>\n", r);
        ap_rprintf(r, "<h3>Processes (%" APR_UINT64_T_FMT " alive, %" APR_UINT64_T_FMT
                   " dead)</h3>\n<table border=\"0\">"
                   "<tr><th>pid</th><th>state</th><th>records</th><th>bytes</th></tr>\n",
                   (apr_uint64_t)(stt.processes - stt.dead_processes),
                   (apr_uint64_t)stt.dead_processes);
        json_each(json, end, "pids", status_pid, &ctx);
        ap_rputs("</table>\n", r);
    }
    return OK;
}

/* ------------------------------------------------------------------ */

/* Releases a lock this thread still holds: a consumer returned without
 * cachem_unlock. Logged as an error naming the request. */
static void release_leaked_lock(const char *uri)
{
    cachem_error_t e;
    if (!t_locked || !g_cache)
        return;
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, g_server,
                 "mod_cachem: the request %s ended holding the cache lock (a missing "
                 "ap_cachem_unlock); released", uri ? uri : "(unknown)");
    e = cachem_unlock(g_cache);
    if (e != CACHEM_OK)
        fail(e, APLOG_ERR, "releasing a leaked lock");
    t_locked = 0;
    t_lock_request = NULL;
}

/* At the end of a request (its pool's destruction): if it runs on the
 * thread that took the lock for this request, release it. */
static apr_status_t request_done(void *data)
{
    request_rec *r = data;
    if (t_locked && t_lock_request == r)
        release_leaked_lock(r->uri);
    if (t_request == r)
        t_request = NULL;
    return APR_SUCCESS;
}

/* At the start of a request: a lock still held by this thread leaked from
 * an earlier request (whose pool died on another thread, say, under the
 * event MPM); release it before serving. */
static int cachem_post_read_request(request_rec *r)
{
    if (!g_cache)
        return DECLINED;
    if (t_locked)
        release_leaked_lock(t_lock_request ? "(an earlier request on this thread)" : NULL);
    t_request = r;
    apr_pool_cleanup_register(r->pool, r, request_done, apr_pool_cleanup_null);
    return DECLINED;
}

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_post_read_request(cachem_post_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_post_config(cachem_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(cachem_child_init, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_monitor(cachem_monitor, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, cachem_status, NULL, NULL, APR_HOOK_MIDDLE);

    APR_REGISTER_OPTIONAL_FN(mod_cachem_handler_init);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_id);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_lock);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_unlock);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_add);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_get);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_get_id);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_get_pid);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_delete);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_delete_pid);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_read);
    APR_REGISTER_OPTIONAL_FN(mod_cachem_strerror);
}

module AP_MODULE_DECLARE_DATA cachem_module = {
    STANDARD20_MODULE_STUFF,
    NULL,                 /* per-directory config */
    NULL,                 /* merge per-directory */
    create_server_config, /* per-server config */
    NULL,                 /* merge per-server: global only */
    cachem_cmds,
    register_hooks
};
