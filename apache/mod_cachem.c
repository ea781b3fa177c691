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
 * This file holds the module record, the directives table and the
 * life-cycle hooks; the optional functions other modules call (and the
 * per-request lock bookkeeping) are in cachem_api.c, the directive handlers
 * in cachem_config.c, file ownership in cachem_files.c, the reaper process
 * in cachem_reaper.c, the status page in cachem_status.c
 * (mod_cachem_private.h declares what they share).
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
#include "mod_cachem_private.h"

cachem_cfg *server_cfg(server_rec *s)
{
    return ap_get_module_config(s->module_config, &cachem_module);
}

static const command_rec cachem_cmds[] = {
    AP_INIT_TAKE2("CACHEM", set_cachem, NULL, RSRC_CONF,
                  "CACHEM path|NULL size|NULL: the region (NULL path = anonymous; "
                  "NULL size = 256K; size a multiple of 8, at least a page)"),
    AP_INIT_TAKE1("CACHEMlockFile", set_abs_path, (void *)APR_OFFSETOF(cachem_cfg, lock_file), RSRC_CONF,
                  "absolute path of the global lockfile (default <region>.lock)"),
    AP_INIT_TAKE1("CACHEMDBM", set_abs_path, (void *)APR_OFFSETOF(cachem_cfg, dbm), RSRC_CONF,
                  "accepted for compatibility: owner ids live in the region; a fresh start removes this directory (default <region>.ids)"),
    AP_INIT_TAKE1("CACHEMPersist", set_persist, NULL, RSRC_CONF,
                  "snapshot file: saved at a clean stop, restored at start (default off)"),
    AP_INIT_TAKE1("CACHEMReap", set_reap, NULL, RSRC_CONF,
                  "all|process|off: which records of dead processes are reaped (default process)"),
    AP_INIT_TAKE1("CACHEMCompaction", set_compaction, NULL, RSRC_CONF,
                  "deferred|eager: how deleted records' space is reclaimed (default deferred)"),
    AP_INIT_TAKE1("CACHEMReapInterval", set_reap_interval, NULL, RSRC_CONF,
                  "seconds between reaps by the parent (default 5, 0 = off)"),
    AP_INIT_TAKE1("CACHEMLockTimeout", set_lock_timeout, NULL, RSRC_CONF,
                  "seconds a request waits for the cache lock held by a live process "
                  "(fractions or NNNms allowed; default 10); then the call fails (503)"),
    AP_INIT_TAKE1("CACHEMMode", set_mode, NULL, RSRC_CONF,
                  "octal permission bits of the region, lockfile and id store (default 0600)"),
    {NULL}
};

/* ------------------------------------------------------------------ */
/* Process state                                                      */

/* This process's view (mod_cachem_private.h). */
cachem_state *g_state;
cachem_t *g_cache;
server_rec *g_server;
static int g_reap_interval = CACHEM_DEFAULT_REAP_INTERVAL;
static int g_own_child_handle;

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
    o->lock_timeout_ms = st->lock_timeout_ms;
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

/* The same at a stop, from a cleanup of pconf: httpd clears pconf at every
 * restart, but only at the stop does it do so in the EXITING state, and
 * then before the modules are unloaded, so the log lines still carry this
 * module's tag (the process pool's cleanup runs after, with the module's
 * short name gone: "[:notice]"). parent_exit stays registered there too for
 * an exit that skips this; it does nothing the second time. */
static apr_status_t pconf_exit(void *data)
{
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_EXITING)
        return parent_exit(data);
    return APR_SUCCESS;
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
    /* An anonymous region has no files: no lockfile, no id store (the
     * library refuses both for it). CACHEMlockFile / CACHEMDBM are ignored
     * then, with a notice. */
    if (!want.path) {
        if (cfg->lock_file || cfg->dbm)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "mod_cachem: CACHEMlockFile and CACHEMDBM are ignored for an anonymous "
                         "region (it has no files)");
        want.lock_file = NULL;
        want.dbm = NULL;
    }
    else {
        want.lock_file = cfg->lock_file ? apr_pstrdup(ptemp, cfg->lock_file)
                                        : apr_pstrcat(ptemp, want.path, ".lock", NULL);
        want.dbm = cfg->dbm ? apr_pstrdup(ptemp, cfg->dbm) : apr_pstrcat(ptemp, want.path, ".ids", NULL);
    }
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
    st->lock_timeout_ms = cfg->lock_timeout_ms;

    if (st->cache && same_str(st->path, want.path) && st->size == want.size
        && same_str(st->lock_file, want.lock_file)
        && st->reap == want.reap && st->compaction == want.compaction
        && st->mode == want.mode && st->uid == want.uid
        && st->gid == want.gid) {
        /* A graceful restart with the same region: keep it, and its ids
         * (children inherit the handle: the timeout set here is theirs). */
        g_cache = st->cache;
        cachem_set_lock_timeout(st->cache, st->lock_timeout_ms);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     "mod_cachem: restart %lu keeps the region %s", st->starts,
                     st->path ? st->path : "(anonymous)");
        start_reaper(st, s, pconf, cfg->reap_interval);
        apr_pool_cleanup_register(pconf, st, pconf_exit, apr_pool_cleanup_null);
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
    st->lock_file = want.lock_file ? apr_pstrdup(pp, want.lock_file) : NULL;
    st->dbm = want.dbm ? apr_pstrdup(pp, want.dbm) : NULL;
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
    /* The children run as User/Group: the lockfile must be theirs before
     * anyone uses it. Names live in the region (issue 22): no id store is
     * made; CACHEMDBM only names the directory a fresh start removes (the
     * mirror `cachem ids --sync` writes there). */
    if (st->lock_file)
        prepare_path(s, st->lock_file, 0, st);

    st->cache = cachem_open(st->path, st->size, &opts, &e);
    if (!st->cache && e == CACHEM_E_INVALID_ARGUMENT && (st->uid >= 0 || st->gid >= 0)) {
        /* A libcachem without owner support: create, then chown here. */
        opts.owner_uid = -1;
        opts.owner_gid = -1;
        st->cache = cachem_open(st->path, st->size, &opts, &e);
        if (st->cache) {
            if (st->path)
                prepare_path(s, st->path, 0, st);
            if (st->lock_file)
                prepare_path(s, st->lock_file, 0, st);
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
        }
        if (carried)
            apr_file_remove(carried, ptemp);
    }

    if (!st->cleanup_registered) {
        apr_pool_cleanup_register(pp, st, parent_exit, apr_pool_cleanup_null);
        st->cleanup_registered = 1;
    }
    start_reaper(st, s, pconf, cfg->reap_interval);
    apr_pool_cleanup_register(pconf, st, pconf_exit, apr_pool_cleanup_null);
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
    reap_and_log(st, s);
    return DECLINED;
}
static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_post_config(cachem_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(cachem_child_init, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_monitor(cachem_monitor, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, cachem_status_section, NULL, NULL, APR_HOOK_MIDDLE);

    cachem_register_api();
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
