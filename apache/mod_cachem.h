/*
 * mod_cachem.h - the API mod_cachem offers to other Apache httpd 2.4 modules.
 *
 * mod_cachem creates one shared-memory cache in the server (see the CACHEM
 * directives) and exports the seed mod_cachem's functions as APR optional
 * functions, so they work whatever the LoadModule order. Include this header
 * (it needs nothing but httpd's and APR's headers) and call the inline
 * ap_cachem_* helpers below; they retrieve the optional functions on first
 * use.
 *
 * Names. The C ABI of the cachem library (cachem.h) already uses the
 * cachem_* names, on explicit handles. So that a module may include both
 * headers, everything here is prefixed:
 *
 *   seed mod_cachem          this header (inline helper)   optional function
 *   cachem_handler_init(r)   ap_cachem_handler_init(r)     mod_cachem_handler_init
 *   cachem_id(s, p)          ap_cachem_id(s, p)            mod_cachem_id
 *   cachem_lock()            ap_cachem_lock()              mod_cachem_lock
 *   cachem_unlock()          ap_cachem_unlock()            mod_cachem_unlock
 *   cachem_add(d, n, id)     ap_cachem_add(d, n, id)       mod_cachem_add
 *   cachem_get(i)            ap_cachem_get(i, &len)        mod_cachem_get
 *   cachem_get_id(id, i)     ap_cachem_get_id(id, i)       mod_cachem_get_id
 *   cachem_get_pid(id, i)    ap_cachem_get_pid(id, i)      mod_cachem_get_pid
 *   cachem_delete(i, flags)  ap_cachem_delete(i, flags)    mod_cachem_delete
 *   cachem_delete_pid(id)    ap_cachem_delete_pid(id, &n)  mod_cachem_delete_pid
 *   CACHEM_INVALID_INDEX     AP_CACHEM_INVALID_INDEX
 *   CACHEM_INVALID_ID        AP_CACHEM_INVALID_ID (= process-scoped owner)
 *   CACHEM_NOLOCKING         AP_CACHEM_NOLOCKING
 *   m_index_t, cachem_id_t   ap_cachem_index_t, ap_cachem_id_t
 *
 * Plus ap_cachem_read (copy a record out without the lock) and
 * ap_cachem_strerror.
 *
 * Errors: every failure is logged by mod_cachem through ap_log_error, with
 * the record index and the reason; the helpers return AP_CACHEM_INVALID_INDEX,
 * AP_CACHEM_INVALID_ID, NULL or an apr_status_t that is not APR_SUCCESS
 * (AP_CACHEM_STATUS(code) for a cachem error code, APR_ENOTIMPL when
 * mod_cachem is not loaded).
 *
 * Locking: the lock is per thread (worker and event MPMs share the cache
 * between threads). A second ap_cachem_lock in the same thread fails instead
 * of hanging. ap_cachem_get needs the lock; the pointer it returns is valid
 * until the thread calls ap_cachem_unlock, ap_cachem_add or ap_cachem_delete.
 * add, delete, get_id, get_pid and delete_pid take the lock around the call
 * when the thread does not hold it. If a process dies holding the lock, the
 * next process to lock recovers the cache.
 *
 * Indexes are stable handles (slot + generation): an index stays valid while
 * the record moves during compaction, and an index kept after its record was
 * deleted is reported as stale, never resolved to another record.
 */
#ifndef MOD_CACHEM_H
#define MOD_CACHEM_H

#include "httpd.h"
#include "apr_optional.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A record index (the C ABI's cachem_index_t). */
typedef apr_uint64_t ap_cachem_index_t;
/* An owner id (the C ABI's cachem_id_t). */
typedef apr_uint32_t ap_cachem_id_t;

/* "No record", and the start of an iteration. */
#define AP_CACHEM_INVALID_INDEX (~(ap_cachem_index_t)0)
/* The process-scoped owner: records added with it are deleted when the
 * adding process exits (child pool cleanup) or dies (reaped). Also what
 * ap_cachem_id returns on error. */
#define AP_CACHEM_INVALID_ID ((ap_cachem_id_t)0)
/* ap_cachem_delete flag: the caller holds the lock (as in the seed's
 * cachem_delete(index, CACHEM_NOLOCKING)); the call fails if it does not. */
#define AP_CACHEM_NOLOCKING 1

/* A cachem error code (cachem.h's cachem_error_t) as an apr_status_t. */
#define AP_CACHEM_ERRSPACE (APR_OS_START_USERERR + 9000)
#define AP_CACHEM_STATUS(code) ((apr_status_t)(AP_CACHEM_ERRSPACE + (code)))
#define AP_CACHEM_IS_STATUS(s) ((s) > AP_CACHEM_ERRSPACE && (s) < AP_CACHEM_ERRSPACE + 1000)

APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_handler_init, (request_rec *r));
APR_DECLARE_OPTIONAL_FN(ap_cachem_id_t, mod_cachem_id, (const char *s, apr_pool_t *p));
APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_lock, (void));
APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_unlock, (void));
APR_DECLARE_OPTIONAL_FN(ap_cachem_index_t, mod_cachem_add,
                        (const void *data, apr_size_t len, ap_cachem_id_t id));
APR_DECLARE_OPTIONAL_FN(void *, mod_cachem_get, (ap_cachem_index_t index, apr_size_t *len));
APR_DECLARE_OPTIONAL_FN(ap_cachem_index_t, mod_cachem_get_id,
                        (ap_cachem_id_t id, ap_cachem_index_t after));
APR_DECLARE_OPTIONAL_FN(ap_cachem_index_t, mod_cachem_get_pid,
                        (ap_cachem_id_t id, ap_cachem_index_t after));
APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_delete, (ap_cachem_index_t index, int flags));
APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_delete_pid,
                        (ap_cachem_id_t id, apr_size_t *removed));
APR_DECLARE_OPTIONAL_FN(apr_status_t, mod_cachem_read,
                        (ap_cachem_index_t index, void *buf, apr_size_t len,
                         apr_size_t *out_len));
APR_DECLARE_OPTIONAL_FN(const char *, mod_cachem_strerror, (apr_status_t status));

/* The optional functions, retrieved once per consumer module. */
typedef struct {
    int resolved;
    APR_OPTIONAL_FN_TYPE(mod_cachem_handler_init) *handler_init;
    APR_OPTIONAL_FN_TYPE(mod_cachem_id) *id;
    APR_OPTIONAL_FN_TYPE(mod_cachem_lock) *lock;
    APR_OPTIONAL_FN_TYPE(mod_cachem_unlock) *unlock;
    APR_OPTIONAL_FN_TYPE(mod_cachem_add) *add;
    APR_OPTIONAL_FN_TYPE(mod_cachem_get) *get;
    APR_OPTIONAL_FN_TYPE(mod_cachem_get_id) *get_id;
    APR_OPTIONAL_FN_TYPE(mod_cachem_get_pid) *get_pid;
    APR_OPTIONAL_FN_TYPE(mod_cachem_delete) *del;
    APR_OPTIONAL_FN_TYPE(mod_cachem_delete_pid) *delete_pid;
    APR_OPTIONAL_FN_TYPE(mod_cachem_read) *read;
    APR_OPTIONAL_FN_TYPE(mod_cachem_strerror) *strerror;
} ap_cachem_fns_t;

#if defined(__GNUC__)
__attribute__((unused))
#endif
static ap_cachem_fns_t ap_cachem_fns;

/* (Re)retrieves the optional functions. Call it from your module's
 * optional_fn_retrieve hook, so a reloaded mod_cachem is picked up after a
 * graceful restart; the helpers below also call it when nothing was
 * retrieved yet. Returns 1 when mod_cachem is loaded. */
static APR_INLINE int ap_cachem_retrieve(void)
{
    ap_cachem_fns.handler_init = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_handler_init);
    ap_cachem_fns.id = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_id);
    ap_cachem_fns.lock = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_lock);
    ap_cachem_fns.unlock = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_unlock);
    ap_cachem_fns.add = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_add);
    ap_cachem_fns.get = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_get);
    ap_cachem_fns.get_id = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_get_id);
    ap_cachem_fns.get_pid = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_get_pid);
    ap_cachem_fns.del = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_delete);
    ap_cachem_fns.delete_pid = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_delete_pid);
    ap_cachem_fns.read = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_read);
    ap_cachem_fns.strerror = APR_RETRIEVE_OPTIONAL_FN(mod_cachem_strerror);
    ap_cachem_fns.resolved = ap_cachem_fns.handler_init && ap_cachem_fns.id
        && ap_cachem_fns.lock && ap_cachem_fns.unlock && ap_cachem_fns.add
        && ap_cachem_fns.get && ap_cachem_fns.get_id && ap_cachem_fns.get_pid
        && ap_cachem_fns.del && ap_cachem_fns.delete_pid && ap_cachem_fns.read
        && ap_cachem_fns.strerror;
    return ap_cachem_fns.resolved;
}

static APR_INLINE int ap_cachem_ready(void)
{
    return ap_cachem_fns.resolved || ap_cachem_retrieve();
}

/* First thing in a handler: makes sure this process is attached to the
 * cache. APR_SUCCESS when the cache can be used. */
static APR_INLINE apr_status_t ap_cachem_handler_init(request_rec *r)
{
    return ap_cachem_ready() ? ap_cachem_fns.handler_init(r) : APR_ENOTIMPL;
}

/* The owner id of s: the same in every process of this server run (keep
 * it in a global). s == NULL: a fresh unique id. AP_CACHEM_INVALID_ID on
 * error. p is accepted for the seed's signature and may be NULL. */
static APR_INLINE ap_cachem_id_t ap_cachem_id(const char *s, apr_pool_t *p)
{
    return ap_cachem_ready() ? ap_cachem_fns.id(s, p) : AP_CACHEM_INVALID_ID;
}

static APR_INLINE apr_status_t ap_cachem_lock(void)
{
    return ap_cachem_ready() ? ap_cachem_fns.lock() : APR_ENOTIMPL;
}

static APR_INLINE apr_status_t ap_cachem_unlock(void)
{
    return ap_cachem_ready() ? ap_cachem_fns.unlock() : APR_ENOTIMPL;
}

/* Inserts a copy of len bytes (8-byte aligned in the cache) owned by id;
 * the record also carries this process's pid. AP_CACHEM_INVALID_INDEX on
 * error (no room, too large, ...: logged). */
static APR_INLINE ap_cachem_index_t ap_cachem_add(const void *data, apr_size_t len,
                                                  ap_cachem_id_t id)
{
    return ap_cachem_ready() ? ap_cachem_fns.add(data, len, id) : AP_CACHEM_INVALID_INDEX;
}

/* The record's bytes, in place (needs the lock); *len (may be NULL) gets
 * its length. NULL for a stale or unknown index, or without the lock. */
static APR_INLINE void *ap_cachem_get(ap_cachem_index_t index, apr_size_t *len)
{
    return ap_cachem_ready() ? ap_cachem_fns.get(index, len) : NULL;
}

/* The next record of owner id after `after` (AP_CACHEM_INVALID_INDEX:
 * the first); AP_CACHEM_INVALID_INDEX when there is none. */
static APR_INLINE ap_cachem_index_t ap_cachem_get_id(ap_cachem_id_t id, ap_cachem_index_t after)
{
    return ap_cachem_ready() ? ap_cachem_fns.get_id(id, after) : AP_CACHEM_INVALID_INDEX;
}

/* The same, restricted to records this process added. */
static APR_INLINE ap_cachem_index_t ap_cachem_get_pid(ap_cachem_id_t id, ap_cachem_index_t after)
{
    return ap_cachem_ready() ? ap_cachem_fns.get_pid(id, after) : AP_CACHEM_INVALID_INDEX;
}

/* Deletes a record (compacting). flags: 0, or AP_CACHEM_NOLOCKING when
 * the caller holds the lock. */
static APR_INLINE apr_status_t ap_cachem_delete(ap_cachem_index_t index, int flags)
{
    return ap_cachem_ready() ? ap_cachem_fns.del(index, flags) : APR_ENOTIMPL;
}

/* Deletes every record of owner id added by this process; *removed (may
 * be NULL) gets the count. */
static APR_INLINE apr_status_t ap_cachem_delete_pid(ap_cachem_id_t id, apr_size_t *removed)
{
    return ap_cachem_ready() ? ap_cachem_fns.delete_pid(id, removed) : APR_ENOTIMPL;
}

/* Copies a record out without holding the lock (optimistic read). */
static APR_INLINE apr_status_t ap_cachem_read(ap_cachem_index_t index, void *buf,
                                              apr_size_t len, apr_size_t *out_len)
{
    return ap_cachem_ready() ? ap_cachem_fns.read(index, buf, len, out_len) : APR_ENOTIMPL;
}

/* A message for a status returned by the helpers above. */
static APR_INLINE const char *ap_cachem_strerror(apr_status_t status)
{
    if (status == APR_ENOTIMPL && !ap_cachem_ready())
        return "mod_cachem is not loaded";
    return ap_cachem_ready() ? ap_cachem_fns.strerror(status) : "mod_cachem is not loaded";
}

#ifdef __cplusplus
}
#endif

#endif /* MOD_CACHEM_H */
