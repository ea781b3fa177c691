/*
 * mod_cachem's documented usage loops (seed 002: ACQUIRE AN MODULE SPECIFIC
 * ID, INSERTING A RECORD INTO CACHE, ACCESSING ALL RECORDS WITH A SPECIFIC
 * ID, DELETING ALL RECORDS WITH A SPECIFIC ID, DELETING A SPECIFIC RECORD,
 * DELETING ALL RECORDS WITH CURRENT PID AND SPECIFIC ID) written in C as a
 * module author writes them, on libcachem: the same loops, on an explicit
 * handle, with the index passed back through an out-parameter.
 *
 * A pre-fork server in miniature: the parent creates the cache (the CACHEM
 * directive, post_config), forks children that each run the module's
 * "handler" and exit; the parent checks what they left.
 *
 * The parent resolves the module's id in post_config (so the children's
 * cachem_id of the same name is memoised); each child also registers a name
 * of its own, so the registry is used in children forked after the parent
 * used it, concurrently.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "check.h"

/* mod_cachem's server-wide cache; here, a handle made in post_config. */
static cachem_t *cache;

typedef struct {
    pid_t pid;
    unsigned hits;
    char note[40];
} some_record_t;

/* The module's method handler. Returns 0 when every loop behaved. */
static int handler(int round) {
    cachem_id_t id;
    cachem_index_t index;
    some_record_t rec;
    void *ptr = NULL;
    size_t len = 0;
    int n;

    /* ACQUIRE AN MODULE SPECIFIC ID */
    OK(cachem_lock(cache));
    OK(cachem_id(cache, __FILE__, &id));
    OK(cachem_unlock(cache));

    /* INSERTING A RECORD INTO CACHE (three of them) */
    for (int k = 0; k < 3; k++) {
        memset(&rec, 0, sizeof rec);
        rec.pid = getpid();
        rec.hits = (unsigned)(round * 10 + k);
        snprintf(rec.note, sizeof rec.note, "round %d rec %d", round, k);
        OK(cachem_lock(cache));
        OK(cachem_add(cache, &rec, sizeof(rec), id, &index));
        OK(cachem_unlock(cache));
    }

    /* ACCESSING ALL RECORDS WITH A SPECIFIC ID: update ours in place. */
    index = CACHEM_INVALID_INDEX;
    n = 0;
    OK(cachem_lock(cache));
    while (cachem_get_id(cache, id, index, &index) == CACHEM_OK && index != CACHEM_INVALID_INDEX) {
        OK(cachem_get(cache, index, &ptr, &len));
        CHECK(len == sizeof(some_record_t));
        some_record_t *r = (some_record_t *)ptr; /* 8-byte aligned */
        if (r->pid == getpid())
            r->hits += 1000;
        n++;
    }
    OK(cachem_unlock(cache));
    CHECK(n >= 3);

    /* DELETING A SPECIFIC RECORD: our first one. */
    OK(cachem_lock(cache));
    OK(cachem_get_pid(cache, id, CACHEM_INVALID_INDEX, &index));
    CHECK(index != CACHEM_INVALID_INDEX);
    OK(cachem_get(cache, index, &ptr, &len));
    CHECK(((some_record_t *)ptr)->pid == getpid() && ((some_record_t *)ptr)->hits >= 1000);
    OK(cachem_delete(cache, index));
    OK(cachem_unlock(cache));

    /* DELETING ALL RECORDS WITH CURRENT PID AND SPECIFIC ID, but one. */
    n = 0;
    OK(cachem_lock(cache));
    while (cachem_get_pid(cache, id, CACHEM_INVALID_INDEX, &index) == CACHEM_OK &&
           index != CACHEM_INVALID_INDEX) {
        if (++n == 2)
            break; /* keep the last one for the parent to see */
        OK(cachem_delete(cache, index));
    }
    OK(cachem_unlock(cache));
    CHECK(n == 2);

    /* A name no process registered yet, from this child. */
    char own[64];
    cachem_id_t own_id;
    snprintf(own, sizeof own, "child %d", round);
    OK(cachem_id(cache, own, &own_id));
    CHECK(own_id != id && own_id != CACHEM_INVALID_ID);

    /* A process-scoped record: gone when this child exits. */
    OK(cachem_add(cache, "scratch", 7, CACHEM_INVALID_ID, NULL));
    return 0;
}

static int wait_child(pid_t pid) {
    int status = 0;
    for (int i = 0; i < 2000; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 0;
}

static pid_t spawn(int round) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(handler(round));
    return pid;
}

int main(void) {
    /* CACHEM <name> <size>: created once, in the parent. */
    cachem_error_t err;
    cache = cachem_open("seed", 64 * 1024, NULL, &err);
    CHECK(cache != NULL);
    cachem_id_t id;
    OK(cachem_id(cache, __FILE__, &id)); /* post_config */

    enum { KIDS = 4 };
    pid_t kids[KIDS];
    for (int k = 0; k < KIDS; k++)
        kids[k] = spawn(k);
    for (int k = 0; k < KIDS; k++)
        CHECK(wait_child(kids[k]));

    /* The parent, after the children: one record left by each, and the
     * children's process-scoped records are reaped; their names are
     * registered for everyone. */
    cachem_id_t c0, c3;
    OK(cachem_id(cache, "child 0", &c0));
    OK(cachem_id(cache, "child 3", &c3));
    CHECK(c0 != c3 && c0 != id);
    cachem_reap_report_t rep;
    OK(cachem_reap(cache, &rep));
    CHECK(rep.records == KIDS);

    cachem_index_t index = CACHEM_INVALID_INDEX;
    void *ptr;
    size_t len;
    int n = 0;
    OK(cachem_lock(cache));
    while (cachem_get_id(cache, id, index, &index) == CACHEM_OK && index != CACHEM_INVALID_INDEX) {
        OK(cachem_get(cache, index, &ptr, &len));
        CHECK(((some_record_t *)ptr)->hits >= 1000);
        n++;
    }
    OK(cachem_unlock(cache));
    CHECK(n == KIDS);

    /* The order of a walk, and a removal in the middle of one: records of
       an id come back in the order they were added, and "delete the current
       record, then ask for the one after it" visits every record once. */
    {
        cachem_id_t oid;
        unsigned seen = 0, kept = 0;
        OK(cachem_id(cache, "order", &oid));
        OK(cachem_lock(cache));
        for (unsigned k = 0; k < 6; k++)
            OK(cachem_add(cache, &k, sizeof k, oid, &index));
        index = CACHEM_INVALID_INDEX;
        while (cachem_get_id(cache, oid, index, &index) == CACHEM_OK && index != CACHEM_INVALID_INDEX) {
            OK(cachem_get(cache, index, &ptr, &len));
            CHECK(len == sizeof(unsigned) && *(unsigned *)ptr == seen);
            if (seen % 2 == 0)
                OK(cachem_delete(cache, index)); /* then ask for the one after it */
            else
                kept++;
            CHECK(++seen <= 6);
        }
        CHECK(seen == 6 && kept == 3);
        index = CACHEM_INVALID_INDEX;
        seen = 0;
        while (cachem_get_id(cache, oid, index, &index) == CACHEM_OK && index != CACHEM_INVALID_INDEX) {
            OK(cachem_get(cache, index, &ptr, &len));
            CHECK(*(unsigned *)ptr == 2 * seen + 1);
            seen++;
        }
        CHECK(seen == 3);
        while (cachem_get_id(cache, oid, CACHEM_INVALID_INDEX, &index) == CACHEM_OK &&
               index != CACHEM_INVALID_INDEX)
            OK(cachem_delete(cache, index));
        OK(cachem_unlock(cache));
    }

    /* DELETING ALL RECORDS WITH A SPECIFIC ID */
    index = CACHEM_INVALID_INDEX;
    OK(cachem_lock(cache));
    while (cachem_get_id(cache, id, CACHEM_INVALID_INDEX, &index) == CACHEM_OK &&
           index != CACHEM_INVALID_INDEX) {
        OK(cachem_delete(cache, index));
    }
    OK(cachem_unlock(cache));

    cachem_stat_t st;
    OK(cachem_stat(cache, &st));
    CHECK(st.records == 0);
    OK(cachem_verify(cache));
    OK(cachem_close(cache));
    OK(cachem_destroy("seed", NULL));
    fprintf(stderr, "seed usage loops passed\n");
    return 0;
}
