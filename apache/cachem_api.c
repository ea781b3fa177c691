/*
 * mod_cachem's API for other modules: the APR optional functions declared
 * in mod_cachem.h (ap_cachem_id, _lock, _unlock, _add, _get, _get_id,
 * _get_pid, _delete, _delete_pid, _read, _strerror), each a thin wrapper
 * of the cachem C ABI on this process's handle (g_cache) that logs a
 * failure once with the library's detail; and the per-thread bookkeeping
 * that releases a lock a consumer module leaked past the end of its
 * request (post_read_request and the request pool's cleanup).
 * cachem_register_api() registers both from mod_cachem.c's register_hooks.
 */
#include "mod_cachem_private.h"

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
apr_status_t fail(cachem_error_t e, int level, const char *fmt, ...)
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

/* A lock timeout is logged once per episode: while the same thread holds
 * the lock (the library's detail names it as "(thread T)"), later timeouts
 * in this process are logged at debug level only, so a stuck holder makes
 * one error line per process, not one per request. A lock that succeeds
 * ends the episode. Threads race on last_holder harmlessly (at worst one
 * more line). */
static unsigned long last_holder;

static apr_status_t lock_timed_out(void)
{
    const char *d = detail();
    const char *t = strstr(d, "(thread ");
    unsigned long holder = t ? strtoul(t + 8, NULL, 10) : 0;
    if (holder != 0 && holder == __atomic_load_n(&last_holder, __ATOMIC_RELAXED))
        return fail(CACHEM_E_LOCK_TIMEOUT, APLOG_DEBUG, "cachem_lock");
    __atomic_store_n(&last_holder, holder, __ATOMIC_RELAXED);
    return fail(CACHEM_E_LOCK_TIMEOUT, APLOG_ERR, "cachem_lock");
}

static apr_status_t mod_cachem_lock(void)
{
    cachem_error_t e;
    if (!g_cache)
        return not_ready("cachem_lock");
    e = cachem_lock(g_cache);
    if (e == CACHEM_E_LOCK_TIMEOUT)
        return lock_timed_out();
    if (e != CACHEM_OK)
        return fail(e, APLOG_ERR, "cachem_lock");
    if (__atomic_load_n(&last_holder, __ATOMIC_RELAXED) != 0)
        __atomic_store_n(&last_holder, 0, __ATOMIC_RELAXED);
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
    if ((flags & AP_CACHEM_NOLOCKING) && !t_locked) {
        /* Refused here, before any library call: the library's last error
         * message is some earlier call's, so it is not the detail. */
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, g_server,
                     "mod_cachem: cachem_delete(index 0x%" APR_UINT64_T_HEX_FMT
                     ", CACHEM_NOLOCKING) failed: %s (cachem_delete: CACHEM_NOLOCKING says "
                     "this thread holds the lock, and it does not: ap_cachem_lock first)",
                     index, cachem_strerror(CACHEM_E_NOT_LOCKED));
        return as_status(CACHEM_E_NOT_LOCKED);
    }
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

void cachem_register_api(void)
{
    ap_hook_post_read_request(cachem_post_read_request, NULL, NULL, APR_HOOK_REALLY_FIRST);
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
