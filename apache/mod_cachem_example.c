/*
 * mod_cachem_example - a small consumer of mod_cachem, the sample a module
 * author copies (walked through in docs/apache.md).
 *
 * - Every request bumps a shared hit counter: one record owned by the id
 *   "mod_cachem_example", updated in place under the lock.
 * - Every child keeps one process-scoped record (owner AP_CACHEM_INVALID_ID)
 *   with its pid and request count; mod_cachem deletes it when the child
 *   exits, and reaps it when the child is killed.
 * - A handler, `SetHandler cachem-example`, prints the counter and every
 *   child's record. With the query string `churn` it deletes and re-adds
 *   records (the hit counter, this child's record and a few temporary ones)
 *   to exercise compaction under load.
 * - Test only (`CachemExampleTestURLs On`): `?lock-sleep=N` takes the lock,
 *   sends one line and sleeps N seconds holding it (the crash test SIGKILLs
 *   the child meanwhile); `?stale` uses an index after deleting its record
 *   (mod_cachem refuses it and logs the index and the reason);
 *   `?leak-lock` returns holding the lock, a consumer bug mod_cachem
 *   contains (it releases the lock when the request ends, and logs it).
 *
 * Only mod_cachem.h is needed; LoadModule order does not matter.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#include "apr_strings.h"
#include "apr_time.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mod_cachem.h"

module AP_MODULE_DECLARE_DATA cachem_example_module;
APLOG_USE_MODULE(cachem_example);

#define EXAMPLE_OWNER "mod_cachem_example"
#define CHURN_OWNER "mod_cachem_example/churn"
#define CHILD_TAG "cachem-example-child"

/* The hit counter record (owned by EXAMPLE_OWNER). */
typedef struct {
    apr_uint64_t hits;
} hits_rec;

/* One per child, process-scoped. */
typedef struct {
    char tag[24]; /* CHILD_TAG, NUL-padded */
    apr_uint64_t pid;
    apr_uint64_t requests;
    apr_uint64_t started; /* apr_time_t */
} child_rec;

typedef struct {
    int count;     /* CachemExampleCount On|Off (default On) */
    int test_urls; /* CachemExampleTestURLs On|Off (default Off) */
} example_cfg;

/* Ids are the same in every process of a server run: resolved once in the
 * parent (example_post_config) and inherited by the children; a child
 * resolves them itself if that failed (a benign race between threads: they
 * all get the same value). */
static ap_cachem_id_t example_owner;
static ap_cachem_id_t churn_owner;

static void *create_cfg(apr_pool_t *p, server_rec *s)
{
    example_cfg *c = apr_pcalloc(p, sizeof(*c));
    (void)s;
    c->count = 1;
    return c;
}

static const char *set_count(cmd_parms *cmd, void *d, int on)
{
    example_cfg *c = ap_get_module_config(cmd->server->module_config, &cachem_example_module);
    (void)d;
    c->count = on;
    return NULL;
}

static const char *set_test_urls(cmd_parms *cmd, void *d, int on)
{
    example_cfg *c = ap_get_module_config(cmd->server->module_config, &cachem_example_module);
    (void)d;
    c->test_urls = on;
    return NULL;
}

static int resolve_ids(request_rec *r)
{
    if (!example_owner)
        example_owner = ap_cachem_id(EXAMPLE_OWNER, r->pool);
    if (!churn_owner)
        churn_owner = ap_cachem_id(CHURN_OWNER, r->pool);
    return example_owner != AP_CACHEM_INVALID_ID && churn_owner != AP_CACHEM_INVALID_ID;
}

/* With the lock held: the hit counter, created by the first process that
 * needs it (under the lock, so exactly once). */
static hits_rec *hits_locked(void)
{
    apr_size_t len = 0;
    hits_rec *h;
    ap_cachem_index_t i = ap_cachem_get_id(example_owner, AP_CACHEM_INVALID_INDEX);
    if (i == AP_CACHEM_INVALID_INDEX) {
        hits_rec zero = {0};
        i = ap_cachem_add(&zero, sizeof(zero), example_owner);
        if (i == AP_CACHEM_INVALID_INDEX)
            return NULL;
    }
    h = ap_cachem_get(i, &len);
    return (h && len == sizeof(*h)) ? h : NULL;
}

static int is_child_rec(const void *p, apr_size_t len)
{
    return p && len == sizeof(child_rec) && strcmp(((const child_rec *)p)->tag, CHILD_TAG) == 0;
}

/* With the lock held: this child's record, created on its first request. */
static child_rec *mine_locked(void)
{
    ap_cachem_index_t i = AP_CACHEM_INVALID_INDEX;
    apr_size_t len = 0;
    void *p;
    child_rec c;
    while ((i = ap_cachem_get_pid(AP_CACHEM_INVALID_ID, i)) != AP_CACHEM_INVALID_INDEX) {
        p = ap_cachem_get(i, &len);
        if (is_child_rec(p, len))
            return p;
    }
    memset(&c, 0, sizeof(c));
    apr_cpystrn(c.tag, CHILD_TAG, sizeof(c.tag));
    c.pid = (apr_uint64_t)getpid();
    c.started = (apr_uint64_t)apr_time_now();
    i = ap_cachem_add(&c, sizeof(c), AP_CACHEM_INVALID_ID);
    if (i == AP_CACHEM_INVALID_INDEX)
        return NULL;
    p = ap_cachem_get(i, &len);
    return is_child_rec(p, len) ? p : NULL;
}

/* Every request: bump the shared counter and this child's count. */
static int count_request(request_rec *r)
{
    example_cfg *cfg = ap_get_module_config(r->server->module_config, &cachem_example_module);
    hits_rec *h;
    child_rec *c;
    if (!cfg->count || r->main || r->prev)
        return DECLINED;
    if (ap_cachem_handler_init(r) != APR_SUCCESS || !resolve_ids(r))
        return DECLINED;
    if (ap_cachem_lock() != APR_SUCCESS)
        return DECLINED;
    h = hits_locked();
    if (h)
        h->hits++;
    c = mine_locked();
    if (c)
        c->requests++;
    ap_cachem_unlock();
    apr_table_setn(r->err_headers_out, "X-Cachem-Child",
                   apr_psprintf(r->pool, "%ld", (long)getpid()));
    return DECLINED;
}

/* ?churn: delete and re-add records under load, keeping the counts. */
static void churn(request_rec *r)
{
    ap_cachem_index_t tmp[8], i;
    hits_rec saved_hits;
    child_rec saved_child;
    hits_rec *h;
    child_rec *c;
    int n = 0, k;
    char buf[200];

    if (ap_cachem_lock() != APR_SUCCESS) {
        ap_rputs("lock failed\n", r);
        return;
    }
    /* A few temporary records between the others. */
    for (k = 0; k < 8; k++) {
        memset(buf, 'a' + k, sizeof(buf));
        i = ap_cachem_add(buf, 16 + (apr_size_t)k * 23, churn_owner);
        if (i != AP_CACHEM_INVALID_INDEX)
            tmp[n++] = i;
    }
    /* Move the counter: delete it and add it back with the same value
     * (other children find it again by owner, see hits_locked). */
    h = hits_locked();
    if (h) {
        saved_hits = *h;
        i = ap_cachem_get_id(example_owner, AP_CACHEM_INVALID_INDEX);
        if (ap_cachem_delete(i, AP_CACHEM_NOLOCKING) == APR_SUCCESS)
            ap_cachem_add(&saved_hits, sizeof(saved_hits), example_owner);
    }
    /* The same for this child's record. */
    c = mine_locked();
    if (c) {
        saved_child = *c;
        i = AP_CACHEM_INVALID_INDEX;
        while ((i = ap_cachem_get_pid(AP_CACHEM_INVALID_ID, i)) != AP_CACHEM_INVALID_INDEX) {
            apr_size_t len = 0;
            if (is_child_rec(ap_cachem_get(i, &len), len))
                break;
        }
        if (i != AP_CACHEM_INVALID_INDEX
            && ap_cachem_delete(i, AP_CACHEM_NOLOCKING) == APR_SUCCESS)
            ap_cachem_add(&saved_child, sizeof(saved_child), AP_CACHEM_INVALID_ID);
    }
    /* Every other temporary record, then the rest by owner and pid. */
    for (k = 0; k < n; k += 2)
        ap_cachem_delete(tmp[k], AP_CACHEM_NOLOCKING);
    ap_cachem_delete_pid(churn_owner, NULL);
    ap_cachem_unlock();
    ap_rprintf(r, "churned %d records\n", n + 2);
}

static int example_handler(request_rec *r)
{
    example_cfg *cfg = ap_get_module_config(r->server->module_config, &cachem_example_module);
    ap_cachem_index_t i = AP_CACHEM_INVALID_INDEX;
    hits_rec *h;
    int children = 0;
    const char *text;

    if (!r->handler || strcmp(r->handler, "cachem-example") != 0)
        return DECLINED;
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    if (ap_cachem_handler_init(r) != APR_SUCCESS || !resolve_ids(r))
        return HTTP_SERVICE_UNAVAILABLE;
    ap_set_content_type(r, "text/plain");

    if (r->args && strncmp(r->args, "lock-sleep=", 11) == 0) {
        long secs = atol(r->args + 11);
        if (!cfg->test_urls)
            return HTTP_NOT_FOUND;
        if (secs < 0 || secs > 300)
            return HTTP_BAD_REQUEST;
        if (ap_cachem_lock() != APR_SUCCESS)
            return HTTP_SERVICE_UNAVAILABLE;
        ap_rprintf(r, "locked pid=%ld\n", (long)getpid());
        ap_rflush(r);
        apr_sleep(apr_time_from_sec(secs));
        ap_cachem_unlock();
        ap_rputs("unlocked\n", r);
        return OK;
    }
    if (r->args && strcmp(r->args, "leak-lock") == 0) {
        /* Test only: a buggy consumer that forgets ap_cachem_unlock. */
        if (!cfg->test_urls)
            return HTTP_NOT_FOUND;
        if (ap_cachem_lock() != APR_SUCCESS)
            return HTTP_SERVICE_UNAVAILABLE;
        ap_rputs("returning with the lock held\n", r);
        return OK;
    }
    if (r->args && strcmp(r->args, "stale") == 0) {
        /* Test only: use an index after its record was deleted. mod_cachem
         * refuses it (never another record) and logs index and reason. */
        ap_cachem_index_t i2;
        char x = 'x';
        if (!cfg->test_urls)
            return HTTP_NOT_FOUND;
        i2 = ap_cachem_add(&x, 1, churn_owner);
        if (i2 == AP_CACHEM_INVALID_INDEX || ap_cachem_delete(i2, 0) != APR_SUCCESS)
            return HTTP_SERVICE_UNAVAILABLE;
        if (ap_cachem_lock() != APR_SUCCESS)
            return HTTP_SERVICE_UNAVAILABLE;
        ap_rprintf(r, "index %" APR_UINT64_T_FMT " %s\n", i2,
                   ap_cachem_get(i2, NULL) ? "resolved" : "refused");
        ap_cachem_unlock();
        return OK;
    }
    if (r->args && strcmp(r->args, "nolock-delete") == 0) {
        /* Test only: a failed ap_cachem_get (the library's last error names
         * cachem_get), then a CACHEM_NOLOCKING delete without the lock:
         * refused, and its log line must not borrow the get's detail. */
        ap_cachem_index_t i2;
        char x = 'x';
        apr_status_t rv;
        if (!cfg->test_urls)
            return HTTP_NOT_FOUND;
        i2 = ap_cachem_add(&x, 1, churn_owner);
        if (i2 == AP_CACHEM_INVALID_INDEX || ap_cachem_get(i2, NULL) != NULL)
            return HTTP_SERVICE_UNAVAILABLE;
        rv = ap_cachem_delete(i2, AP_CACHEM_NOLOCKING);
        ap_rprintf(r, "nolock delete %s\n", rv == APR_SUCCESS ? "accepted" : "refused");
        ap_cachem_delete(i2, 0);
        return OK;
    }
    if (r->args && strcmp(r->args, "churn") == 0) {
        churn(r);
        return OK;
    }

    /* Copy what is needed under the lock; write to the client after
     * unlocking (a slow client must not keep every process waiting). */
    if (ap_cachem_lock() != APR_SUCCESS)
        return HTTP_SERVICE_UNAVAILABLE;
    h = hits_locked();
    text = apr_psprintf(r->pool, "hits %" APR_UINT64_T_FMT "\n", h ? h->hits : (apr_uint64_t)0);
    while ((i = ap_cachem_get_id(AP_CACHEM_INVALID_ID, i)) != AP_CACHEM_INVALID_INDEX) {
        apr_size_t len = 0;
        child_rec *c = ap_cachem_get(i, &len);
        if (is_child_rec(c, len)) {
            text = apr_psprintf(r->pool, "%schild %" APR_UINT64_T_FMT " requests %"
                                APR_UINT64_T_FMT "\n", text, c->pid, c->requests);
            children++;
        }
    }
    ap_cachem_unlock();
    ap_rputs(text, r);
    ap_rprintf(r, "children %d\n", children);
    ap_rprintf(r, "owner %u " EXAMPLE_OWNER "\nowner %u " CHURN_OWNER "\n", example_owner,
               churn_owner);
    return OK;
}

/* Refresh the optional functions at every (re)start. */
static void retrieve(void)
{
    ap_cachem_retrieve();
}

/* Resolve the owner ids once in the parent (after mod_cachem made the
 * region), so every child inherits them: no registry access per child.
 * Skips post_config's dry run, where there is no cache yet. */
static int example_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                               server_rec *s)
{
    (void)plog;
    (void)ptemp;
    (void)s;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    example_owner = ap_cachem_id(EXAMPLE_OWNER, pconf);
    churn_owner = ap_cachem_id(CHURN_OWNER, pconf);
    return OK; /* on failure the ids are resolved again per child */
}

static const command_rec example_cmds[] = {
    AP_INIT_FLAG("CachemExampleCount", set_count, NULL, RSRC_CONF,
                 "count every request in the shared hit counter (default On)"),
    AP_INIT_FLAG("CachemExampleTestURLs", set_test_urls, NULL, RSRC_CONF,
                 "test only: enable ?lock-sleep=N, ?stale and ?leak-lock (default Off)"),
    {NULL}
};

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    static const char *const after_cachem[] = {"mod_cachem.c", NULL};
    ap_hook_optional_fn_retrieve(retrieve, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(example_post_config, after_cachem, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_read_request(count_request, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(example_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA cachem_example_module = {
    STANDARD20_MODULE_STUFF,
    NULL, NULL, create_cfg, NULL, example_cmds, register_hooks
};
