/*
 * cachem_config.c - the handlers of mod_cachem's directives (CACHEM,
 * CACHEMlockFile, CACHEMDBM, CACHEMPersist, CACHEMReap, CACHEMCompaction,
 * CACHEMReapInterval, CACHEMMode) and the server config they fill; the
 * directives table itself is in mod_cachem.c. Every value is checked here,
 * so a bad one fails the configuration test with a message naming it.
 */
#include "mod_cachem_private.h"

void *create_server_config(apr_pool_t *p, server_rec *s)
{
    cachem_cfg *c = apr_pcalloc(p, sizeof(*c));
    (void)s;
    c->path = NULL;
    c->size = CACHEM_DEFAULT_SIZE;
    c->reap = CACHEM_REAP_PROCESS;
    c->compaction = CACHEM_COMPACTION_DEFERRED;
    c->reap_interval = CACHEM_DEFAULT_REAP_INTERVAL;
    c->mode = 0600;
    c->lock_timeout_ms = CACHEM_DEFAULT_LOCK_TIMEOUT_MS;
    return c;
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

const char *set_cachem(cmd_parms *cmd, void *dummy, const char *path, const char *size)
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
        /* Every other bound of the library (below 4 GiB...), here rather
         * than at the start: a bad size fails apache2 -t. */
        if (cachem_check_size((uint64_t)v) != CACHEM_OK)
            return apr_psprintf(cmd->pool, "%s: size %s: %s", cmd->cmd->name, size,
                                cachem_last_error_message(NULL));
        c->size = (apr_uint64_t)v;
    }
    return NULL;
}

/* CACHEMlockFile and CACHEMDBM: an absolute path, stored in the field of
 * cachem_cfg at the offset the directive's table entry gives. */
const char *set_abs_path(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    (void)dummy;
    if (err || (err = check_path(cmd, arg, 1)))
        return err;
    *(const char **)((char *)c + (apr_size_t)cmd->info) = arg;
    return NULL;
}

const char *set_persist(cmd_parms *cmd, void *dummy, const char *arg)
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

const char *set_reap(cmd_parms *cmd, void *dummy, const char *arg)
{
    static const keyword k[] = {
        {"all", CACHEM_REAP_ALL}, {"process", CACHEM_REAP_PROCESS}, {"off", CACHEM_REAP_OFF}};
    (void)dummy;
    return set_keyword(cmd, arg, k, 3, &server_cfg(cmd->server)->reap);
}

const char *set_compaction(cmd_parms *cmd, void *dummy, const char *arg)
{
    static const keyword k[] = {
        {"deferred", CACHEM_COMPACTION_DEFERRED}, {"eager", CACHEM_COMPACTION_EAGER}};
    (void)dummy;
    return set_keyword(cmd, arg, k, 2, &server_cfg(cmd->server)->compaction);
}

const char *set_reap_interval(cmd_parms *cmd, void *dummy, const char *arg)
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

const char *set_mode(cmd_parms *cmd, void *dummy, const char *arg)
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

/* CACHEMLockTimeout SECONDS (fractions allowed, or NNNms): how long a
 * request waits for the cache lock held by a live process that does not let
 * go (stopped, in a debugger, looping) before ap_cachem_lock fails (the
 * consumer answers 503). Checked here, so `apachectl -t` rejects a bad one. */
const char *set_lock_timeout(cmd_parms *cmd, void *dummy, const char *arg)
{
    cachem_cfg *c = server_cfg(cmd->server);
    const char *err = global_only(cmd);
    char *end = NULL;
    double v;
    (void)dummy;
    if (err)
        return err;
    errno = 0;
    v = strtod(arg, &end);
    if (!errno && end != arg && strcmp(end, "ms") == 0)
        v /= 1000.0;
    else if (end == arg || *end)
        errno = EINVAL;
    if (errno || !(v >= 0.001 && v <= 86400.0))
        return apr_pstrcat(cmd->pool, cmd->cmd->name, ": '", arg,
                           "' is not a number of seconds from 0.001 to 86400 "
                           "(fractions allowed, or milliseconds as NNNms)", NULL);
    c->lock_timeout_ms = (apr_uint64_t)(v * 1000.0 + 0.5);
    return NULL;
}
