/*
 * cachem_reaper.c - the reaper process. httpd runs the monitor hook only
 * once every ten passes of the MPM's one-second maintenance loop, too
 * coarse for CACHEMReapInterval; so the parent forks one small process
 * that reaps every CACHEMReapInterval seconds (as User, without the
 * listeners, out of the server's process group) and exits when the parent
 * is gone or on SIGTERM between reaps. start_reaper replaces it at every
 * restart, stop_reaper stops it (bounded) at the parent's exit; the
 * monitor hook in mod_cachem.c remains a fallback and shares reap_and_log.
 */
#include "mod_cachem_private.h"

/* Reaps the records of dead processes now and logs what it removed (the
 * reaper's loop and the parent's monitor hook). */
void reap_and_log(cachem_state *st, server_rec *s)
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
        reap_and_log(st, s);
    }
}

void stop_reaper(cachem_state *st)
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

void start_reaper(cachem_state *st, server_rec *s, apr_pool_t *pconf, int interval)
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
