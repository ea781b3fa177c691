/*
 * mod_cachem_private.h - what the sources of mod_cachem share: the
 * configuration and parent-state structs, the process-wide globals, and
 * the functions one file defines for another (mod_cachem.c: the module
 * record, directives table and life-cycle hooks; cachem_api.c: the
 * optional functions and the per-request lock bookkeeping;
 * cachem_config.c: the directive handlers; cachem_files.c: file ownership;
 * cachem_reaper.c: the reaper process; cachem_status.c: the status page).
 * Not installed: other modules use mod_cachem.h.
 */
#ifndef MOD_CACHEM_PRIVATE_H
#define MOD_CACHEM_PRIVATE_H

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

extern module AP_MODULE_DECLARE_DATA cachem_module;

APLOG_USE_MODULE(cachem);

/* Default region size when CACHEM's size is NULL (or CACHEM is absent). */
#define CACHEM_DEFAULT_SIZE (256 * 1024)
#define CACHEM_DEFAULT_REAP_INTERVAL 5
/* CACHEMLockTimeout's default, milliseconds. */
#define CACHEM_DEFAULT_LOCK_TIMEOUT_MS 10000
#define CACHEM_STATE_KEY "mod_cachem.state"

/* Configuration (global server config only) */
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
    apr_uint64_t lock_timeout_ms; /* CACHEMLockTimeout */
} cachem_cfg;

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
    apr_uint64_t lock_timeout_ms; /* may change at a restart */
    apr_int64_t uid, gid;   /* owner given to the files, -1: unchanged */
    pid_t parent_pid;
    apr_time_t last_reap;
    unsigned long starts;   /* real post_config passes (start + restarts) */
    pid_t reaper_pid;       /* the reaper process, 0: none */
    int cleanup_registered;
} cachem_state;

/* This process's view. In the parent: the state's handle; in a child: its
 * own attached handle (named region) or the inherited one (anonymous). */
extern cachem_state *g_state;
extern cachem_t *g_cache;
extern server_rec *g_server;

/* mod_cachem.c */
cachem_cfg *server_cfg(server_rec *s);

/* cachem_api.c: fail() logs a failed cachem call (what was asked, the
 * reason, the library's detail) and returns its apr status;
 * cachem_register_api() registers the optional functions and the
 * post_read_request hook. */
apr_status_t fail(cachem_error_t e, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cachem_register_api(void);

/* cachem_config.c: the directive handlers. */
void *create_server_config(apr_pool_t *p, server_rec *s);
const char *set_cachem(cmd_parms *cmd, void *dummy, const char *path, const char *size);
const char *set_abs_path(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_persist(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_reap(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_compaction(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_reap_interval(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_mode(cmd_parms *cmd, void *dummy, const char *arg);
const char *set_lock_timeout(cmd_parms *cmd, void *dummy, const char *arg);

/* cachem_files.c */
void prepare_path(server_rec *s, const char *path, int dir, const cachem_state *st);

/* cachem_reaper.c */
void reap_and_log(cachem_state *st, server_rec *s);
void start_reaper(cachem_state *st, server_rec *s, apr_pool_t *pconf, int interval);
void stop_reaper(cachem_state *st);

/* cachem_status.c: the mod_status hook. */
int cachem_status_section(request_rec *r, int flags);

#endif
