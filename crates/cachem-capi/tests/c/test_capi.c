/*
 * Calls every function of cachem.h, including every misuse case, from C.
 * Built with -Wall -Werror -fsanitize=address,undefined against
 * libcachem.a and run by tests/c_programs.rs with CACHEM_DIR set to a fresh
 * directory. Exit status 0: all checks passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

#include "check.h"

#define SIZE (256u * 1024u)

static const char *dir;

static void section(const char *name) {
    fprintf(stderr, "-- %s\n", name);
}

static uint64_t records(cachem_t *c) {
    cachem_stat_t st;
    OK(cachem_stat(c, &st));
    return st.records;
}

/* Waits for a child, bounded: SIGKILL after ~10 s. Returns the status. */
static int reap_child(pid_t pid) {
    int status = 0;
    for (int i = 0; i < 1000; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        CHECK(r == 0);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    CHECK(waitpid(pid, &status, 0) == pid);
    fprintf(stderr, "child %d hung and was killed\n", (int)pid);
    _exit(1);
}

static void test_strerror(void) {
    section("strerror and last error");
    for (int i = 0; i <= CACHEM_E_TOO_MANY_HANDLES; i++) {
        const char *s = cachem_strerror(i);
        CHECK(s != NULL && strcmp(s, "unknown cachem error code") != 0);
    }
    CHECK(strcmp(cachem_strerror(-1), "unknown cachem error code") == 0);
    CHECK(strcmp(cachem_strerror(CACHEM_E_LOCK_TIMEOUT + 1), "unknown cachem error code") == 0);
    CHECK(strcmp(cachem_strerror(CACHEM_OK), "success") == 0);
    CHECK(cachem_last_error_message(NULL) != NULL);
}

static void test_open_errors(void) {
    section("open: every refusal");
    cachem_error_t err = CACHEM_OK;
    cachem_options_t o = CACHEM_OPTIONS_INIT;

    CHECK(cachem_open(NULL, 0, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    CHECK(strstr(cachem_last_error_message(NULL), "cachem_open") != NULL);
    CHECK(cachem_open(NULL, 0, NULL, NULL) == NULL); /* err may be NULL */

    CHECK(cachem_open("bad/name", SIZE, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    CHECK(cachem_open("../up", SIZE, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    CHECK(cachem_open("odd", SIZE + 4, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    CHECK(cachem_open("tiny", 64, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);

    o.struct_size = 8;
    CHECK(cachem_open("opts", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    o.struct_size = sizeof o + 8;
    CHECK(cachem_open("opts", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    cachem_options_init(&o);
    o.mode = 0400;
    CHECK(cachem_open("opts", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    cachem_options_init(&o);
    o.reap = 7;
    CHECK(cachem_open("opts", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    cachem_options_init(&o);
    o.attach_only = 1;
    CHECK(cachem_open("missing", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_NOT_FOUND);
    CHECK(cachem_open("missing", 0, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_NOT_FOUND);
    cachem_options_init(&o);
    o.attach_only = 1;
    CHECK(cachem_open(NULL, SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    cachem_options_init(NULL); /* no crash */

    /* Same name, other size: nginx's rule. */
    cachem_t *c = cachem_open("sized", SIZE, NULL, &err);
    CHECK(c != NULL && err == CACHEM_OK);
    CHECK(cachem_open("sized", 2 * SIZE, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_SIZE_MISMATCH);
    CHECK(strstr(cachem_last_error_message(NULL), "sized") != NULL);
    cachem_options_init(&o);
    o.attach_any_size = 1;
    cachem_t *c2 = cachem_open("sized", 2 * SIZE, &o, &err);
    CHECK(c2 != NULL);
    cachem_t *c3 = cachem_open("sized", 0, NULL, &err);
    CHECK(c3 != NULL);
    OK(cachem_close(c2));
    OK(cachem_close(c3));
    /* An option the existing region was not created with is refused, not
     * ignored; so is an attach option on an anonymous region. */
    cachem_options_init(&o);
    o.reap = CACHEM_REAP_ALL;
    CHECK(cachem_open("sized", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    CHECK(strstr(cachem_last_error_message(NULL), "option") != NULL);
    cachem_options_init(&o);
    o.attach_any_size = 1;
    CHECK(cachem_open(NULL, SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    OK(cachem_close(c));

    /* A file that is not a region. */
    char path[4096];
    snprintf(path, sizeof path, "%s/garbage", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    for (int i = 0; i < 8192; i++)
        fputc('x', f);
    fclose(f);
    CHECK(cachem_open(path, 0, NULL, &err) == NULL);
    CHECK(err == CACHEM_E_CORRUPT);

    /* owner_uid / owner_gid: root gives the files away; others cannot. */
    cachem_options_init(&o);
    o.owner_uid = -5;
    CHECK(cachem_open("owned", SIZE, &o, &err) == NULL);
    CHECK(err == CACHEM_E_INVALID_ARGUMENT);
    cachem_options_init(&o);
    o.owner_uid = 65534;
    o.owner_gid = 65534;
    o.mode = 0660;
    c = cachem_open("owned", SIZE, &o, &err);
    if (geteuid() == 0) {
        CHECK(c != NULL);
        struct stat sb;
        snprintf(path, sizeof path, "%s/owned", dir);
        CHECK(stat(path, &sb) == 0 && sb.st_uid == 65534 && sb.st_gid == 65534);
        CHECK((sb.st_mode & 0777) == 0660);
        OK(cachem_close(c));
        OK(cachem_destroy("owned", NULL));
    } else {
        CHECK(c == NULL && err != CACHEM_OK);
    }

    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_destroy(NULL, NULL));
    EXPECT(CACHEM_E_NOT_FOUND, cachem_destroy("never-made", NULL));
    OK(cachem_destroy("sized", NULL));
    EXPECT(CACHEM_E_NOT_FOUND, cachem_destroy("sized", NULL));
}

/* Callbacks of cachem_status_owners / cachem_status_pids: count rows. */
static int count_owner(const cachem_owner_usage_t *u, void *arg) {
    (void)u;
    ++*(size_t *)arg;
    return 0;
}

static int count_pid(const cachem_pid_usage_t *u, void *arg) {
    (void)u;
    ++*(size_t *)arg;
    return 0;
}

static void test_bad_handles(void) {
    section("bad handles: NULL, closed, forged");
    cachem_error_t err;
    cachem_t *c = cachem_open("handles", SIZE, NULL, &err);
    CHECK(c != NULL);
    OK(cachem_close(c));
    EXPECT(CACHEM_E_MISUSE, cachem_close(c));
    OK(cachem_close(NULL));

    cachem_t *forged = (cachem_t *)(uintptr_t)0x1234;
    cachem_t *bads[3] = {NULL, c, forged};
    for (int i = 0; i < 3; i++) {
        cachem_t *b = bads[i];
        cachem_error_t want = b == NULL ? CACHEM_E_INVALID_ARGUMENT : CACHEM_E_MISUSE;
        cachem_id_t id;
        cachem_index_t ix;
        void *p;
        size_t n;
        char buf[8];
        cachem_stat_t st;
        cachem_reap_report_t rep;
        EXPECT(want, cachem_id(b, "x", &id));
        EXPECT(want, cachem_lock(b));
        EXPECT(want, cachem_unlock(b));
        EXPECT(want, cachem_add(b, "x", 1, 0, &ix));
        EXPECT(want, cachem_get(b, 0, &p, &n));
        EXPECT(want, cachem_read(b, 0, buf, sizeof buf, &n));
        EXPECT(want, cachem_get_id(b, 1, CACHEM_INVALID_INDEX, &ix));
        EXPECT(want, cachem_get_pid(b, 1, CACHEM_INVALID_INDEX, &ix));
        EXPECT(want, cachem_delete(b, 0));
        EXPECT(want, cachem_delete_pid(b, 1, &n));
        EXPECT(want, cachem_purge_process(b, &n));
        EXPECT(want, cachem_reap(b, &rep));
        EXPECT(want, cachem_verify(b));
        EXPECT(want, cachem_stat(b, &st));
        EXPECT(want, cachem_status_json(b, buf, sizeof buf, &n));
        cachem_status_t sst = CACHEM_STATUS_INIT;
        EXPECT(want, cachem_status(b, &sst));
        EXPECT(want, cachem_status_owners(b, count_owner, &n));
        EXPECT(want, cachem_status_pids(b, count_pid, &n));
        EXPECT(want, cachem_save(b, "/tmp/x"));
        EXPECT(want, cachem_restore(b, "/tmp/x"));
        CHECK(cachem_max_record_len(b) == 0);
        if (b != NULL)
            EXPECT(CACHEM_E_MISUSE, cachem_close(b));
    }
    OK(cachem_destroy("handles", NULL));
}

static void test_records(void) {
    section("records: add, get, read, iterate, delete, misuse");
    cachem_error_t err;
    cachem_t *c = cachem_open("records", SIZE, NULL, &err);
    CHECK(c != NULL);
    cachem_t *other = cachem_open(NULL, SIZE, NULL, &err);
    CHECK(other != NULL);

    cachem_id_t a, b, u1, u2;
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_id(c, "mod_a", NULL));
    OK(cachem_id(c, "mod_a", &a));
    OK(cachem_id(c, "mod_b", &b));
    OK(cachem_id(c, NULL, &u1));
    OK(cachem_id(c, NULL, &u2));
    CHECK(a != CACHEM_INVALID_ID && b != CACHEM_INVALID_ID && a != b);
    CHECK(u1 != u2 && u1 != a && u2 != b);
    cachem_id_t again;
    OK(cachem_id(c, "mod_a", &again));
    CHECK(again == a);
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_id(c, bad_utf8, &again));

    /* Inserts without the lock take it around the call. */
    cachem_index_t r1, r2, r3, r4;
    OK(cachem_add(c, "one", 3, a, &r1));
    OK(cachem_add(c, "two", 3, b, &r2));
    OK(cachem_add(c, "three", 5, a, &r3));
    OK(cachem_add(c, NULL, 0, a, &r4)); /* an empty record */
    OK(cachem_add(c, "no index wanted", 15, b, NULL));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_add(c, NULL, 4, a, &r4));
    uint64_t max = cachem_max_record_len(c);
    CHECK(max > 0 && max < SIZE);
    EXPECT(CACHEM_E_TOO_LARGE, cachem_add(c, "x", (size_t)max + 1, a, NULL));
    EXPECT(CACHEM_E_TOO_LARGE, cachem_add(c, "x", SIZE_MAX, a, NULL));
    CHECK(strstr(cachem_last_error_message(c), "too large") != NULL);
    CHECK(records(c) == 5);

    /* get needs the lock. */
    void *p = NULL;
    size_t n = 0;
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_get(c, r1, &p, &n));
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_unlock(c));
    OK(cachem_lock(c));
    EXPECT(CACHEM_E_ALREADY_LOCKED, cachem_lock(c));
    OK(cachem_get(c, r1, &p, &n));
    CHECK(n == 3 && memcmp(p, "one", 3) == 0);
    CHECK(((uintptr_t)p & 7) == 0);
    ((char *)p)[0] = 'O'; /* in place, under the lock */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get(c, r1, NULL, &n));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get(c, r1, &p, NULL));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get(c, CACHEM_INVALID_INDEX, &p, &n));
    EXPECT(CACHEM_E_STALE, cachem_get(c, 12345, &p, &n));
    OK(cachem_get(c, r4, &p, &n));
    CHECK(n == 0);

    /* ACCESSING ALL RECORDS WITH A SPECIFIC ID, under the lock. */
    cachem_index_t i = CACHEM_INVALID_INDEX;
    int seen = 0;
    while (cachem_get_id(c, a, i, &i) == CACHEM_OK && i != CACHEM_INVALID_INDEX) {
        OK(cachem_get(c, i, &p, &n));
        seen++;
    }
    CHECK(seen == 3);
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_id(c, a, CACHEM_INVALID_INDEX, NULL));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_pid(c, a, CACHEM_INVALID_INDEX, NULL));
    i = CACHEM_INVALID_INDEX;
    seen = 0;
    while (cachem_get_pid(c, b, i, &i) == CACHEM_OK && i != CACHEM_INVALID_INDEX)
        seen++;
    CHECK(seen == 2);
    OK(cachem_get_id(c, u1, CACHEM_INVALID_INDEX, &i));
    CHECK(i == CACHEM_INVALID_INDEX);

    /* Other calls under the held lock use it (no self-deadlock). */
    OK(cachem_verify(c));
    cachem_stat_t st;
    OK(cachem_stat(c, &st));
    CHECK(st.records == 5 && st.max_record_len == max && st.size == SIZE);
    CHECK(st.inserts >= 5 && st.owners == 2 && st.processes == 1 && st.dead_processes == 0);
    char json[8192];
    size_t need = 0;
    OK(cachem_status_json(c, json, sizeof json, &need));
    CHECK(strlen(json) + 1 == need);
    CHECK(strstr(json, "\"mod_a\"") != NULL && strstr(json, "\"records\":5") != NULL);
    EXPECT(CACHEM_E_ALREADY_LOCKED, cachem_save(c, "/nonexistent/snap"));
    EXPECT(CACHEM_E_ALREADY_LOCKED, cachem_restore(c, "/nonexistent/snap"));
    EXPECT(CACHEM_E_BUSY, cachem_close(c));

    /* Delete under the lock: the pointer is invalid after; the index stale. */
    OK(cachem_delete(c, r2));
    EXPECT(CACHEM_E_STALE, cachem_delete(c, r2));
    EXPECT(CACHEM_E_STALE, cachem_get(c, r2, &p, &n));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_delete(c, CACHEM_INVALID_INDEX));
    OK(cachem_unlock(c));
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_unlock(c));

    /* An index from another region never reaches a record there. */
    cachem_index_t o1;
    OK(cachem_add(other, "elsewhere", 9, a, &o1));
    char buf[64];
    EXPECT(CACHEM_E_STALE, cachem_read(other, r3, buf, sizeof buf, &n));
    EXPECT(CACHEM_E_STALE, cachem_delete(other, r3));
    OK(cachem_read(other, o1, buf, sizeof buf, &n));
    CHECK(n == 9 && memcmp(buf, "elsewhere", 9) == 0);

    /* read: copies out, locking around the call. */
    OK(cachem_read(c, r1, buf, sizeof buf, &n));
    CHECK(n == 3 && memcmp(buf, "One", 3) == 0);
    n = 0;
    EXPECT(CACHEM_E_BUFFER_TOO_SMALL, cachem_read(c, r3, buf, 2, &n));
    CHECK(n == 5);
    /* A length query: buf NULL, len 0 is OK with the length (issue 23). */
    n = 0;
    OK(cachem_read(c, r3, NULL, 0, &n));
    CHECK(n == 5);
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_read(c, r3, NULL, 0, NULL));
    EXPECT(CACHEM_E_BUFFER_TOO_SMALL, cachem_read(c, r3, buf, 0, &n));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_read(c, r3, NULL, 5, &n));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_read(c, CACHEM_INVALID_INDEX, buf, 5, &n));
    OK(cachem_read(c, r4, NULL, 0, &n));
    CHECK(n == 0);

    /* status_json: sizes. */
    EXPECT(CACHEM_E_BUFFER_TOO_SMALL, cachem_status_json(c, json, 4, &need));
    CHECK(need > 4);
    need = 0;
    OK(cachem_status_json(c, NULL, 0, &need));
    CHECK(need > 4);
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status_json(c, NULL, 0, NULL));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status_json(c, NULL, 10, &need));
    OK(cachem_status_json(c, json, need, NULL));

    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_stat(c, NULL));

    /* DELETING ALL RECORDS WITH CURRENT PID AND SPECIFIC ID. */
    size_t removed = 99;
    OK(cachem_delete_pid(c, a, &removed));
    CHECK(removed == 3);
    OK(cachem_delete_pid(c, a, NULL));
    OK(cachem_get_id(c, a, CACHEM_INVALID_INDEX, &i));
    CHECK(i == CACHEM_INVALID_INDEX);

    /* Process-scoped records: purge_process, and close purges them. */
    OK(cachem_add(c, "mine", 4, CACHEM_INVALID_ID, NULL));
    OK(cachem_add(c, "mine", 4, CACHEM_INVALID_ID, NULL));
    OK(cachem_purge_process(c, &removed));
    CHECK(removed == 2);
    OK(cachem_purge_process(c, NULL));
    OK(cachem_add(c, "mine", 4, CACHEM_INVALID_ID, NULL));
    uint64_t before = records(c);
    OK(cachem_close(c));
    c = cachem_open("records", SIZE, NULL, &err);
    CHECK(c != NULL);
    CHECK(records(c) == before - 1);

    /* Reap with nothing dead. */
    cachem_reap_report_t rep = {1, 1, 1};
    OK(cachem_reap(c, &rep));
    CHECK(rep.processes == 0 && rep.records == 0 && rep.bytes == 0);
    OK(cachem_reap(c, NULL));

    /* Two handles of one region in one thread share the thread's lock: it
       belongs to the region and the thread, so either handle unlocks it. */
    cachem_t *c2 = cachem_open("records", SIZE, NULL, &err);
    CHECK(c2 != NULL);
    OK(cachem_lock(c));
    EXPECT(CACHEM_E_ALREADY_LOCKED, cachem_lock(c2));
    OK(cachem_add(c2, "via c2", 6, b, &r1)); /* uses the held lock */
    OK(cachem_get(c2, r1, &p, &n));
    CHECK(n == 6);
    EXPECT(CACHEM_E_BUSY, cachem_close(c)); /* the lock was taken through c */
    OK(cachem_unlock(c2));                 /* releases the lock taken through c */
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_get(c, r1, &p, &n));
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_unlock(c));
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_unlock(c2));
    OK(cachem_lock(c2));
    OK(cachem_get(c, r1, &p, &n));
    OK(cachem_unlock(c));
    EXPECT(CACHEM_E_NOT_LOCKED, cachem_unlock(c2));
    OK(cachem_close(c2));

    /* Fill the region: NO_ROOM, then the region is still sound. */
    static char big[4096];
    memset(big, 7, sizeof big);
    cachem_error_t e;
    int k = 0;
    while ((e = cachem_add(c, big, sizeof big, b, NULL)) == CACHEM_OK)
        k++;
    CHECK(e == CACHEM_E_NO_ROOM && k > 10);
    OK(cachem_verify(c));
    OK(cachem_delete_pid(c, b, NULL));

    OK(cachem_close(c));
    OK(cachem_close(other));
    OK(cachem_destroy("records", NULL));
}

/* ---- threads ------------------------------------------------------------ */

struct shared {
    cachem_t *c;
    cachem_id_t owner;
    int n;
    int failures;
    volatile int stage;
};

static void *worker(void *arg) {
    struct shared *s = (struct shared *)arg;
    for (int k = 0; k < s->n; k++) {
        cachem_index_t ix;
        char rec[32];
        int len = snprintf(rec, sizeof rec, "t%lu-%d", (unsigned long)pthread_self() % 1000, k);
        if (cachem_lock(s->c) != CACHEM_OK) {
            s->failures++;
            continue;
        }
        void *p;
        size_t n;
        if (cachem_add(s->c, rec, (size_t)len, s->owner, &ix) != CACHEM_OK ||
            cachem_get(s->c, ix, &p, &n) != CACHEM_OK || n != (size_t)len || memcmp(p, rec, n) != 0)
            s->failures++;
        if (k % 2 == 0 && cachem_delete(s->c, ix) != CACHEM_OK)
            s->failures++;
        if (cachem_unlock(s->c) != CACHEM_OK)
            s->failures++;
    }
    return NULL;
}

static void *unlock_from_other_thread(void *arg) {
    struct shared *s = (struct shared *)arg;
    /* This thread did not lock: unlocking is an error, not a release. */
    s->failures += cachem_unlock(s->c) != CACHEM_E_NOT_LOCKED;
    /* get without the lock is refused. */
    void *p;
    size_t n;
    s->failures += cachem_get(s->c, 0, &p, &n) != CACHEM_E_NOT_LOCKED;
    /* Closing while another thread holds the lock is refused. */
    s->failures += cachem_close(s->c) != CACHEM_E_BUSY;
    return NULL;
}

static void *exit_holding_lock(void *arg) {
    struct shared *s = (struct shared *)arg;
    s->failures += cachem_lock(s->c) != CACHEM_OK;
    return NULL; /* thread exit releases the lock */
}

/* Adds and deletes until the handle is closed under it. */
static void *hammer(void *arg) {
    struct shared *s = (struct shared *)arg;
    for (;;) {
        cachem_index_t ix;
        cachem_error_t e = cachem_add(s->c, "hammer", 6, s->owner, &ix);
        if (e == CACHEM_E_MISUSE)
            break;
        if (e == CACHEM_OK)
            e = cachem_delete(s->c, ix);
        if (e != CACHEM_OK && e != CACHEM_E_MISUSE) {
            s->failures++;
            break;
        }
        s->stage = 1;
    }
    return NULL;
}

/* Locks and unlocks until the handle is closed under it. */
static void *lock_hammer(void *arg) {
    struct shared *s = (struct shared *)arg;
    for (;;) {
        cachem_error_t e = cachem_lock(s->c);
        if (e == CACHEM_E_MISUSE)
            break;
        if (e != CACHEM_OK || cachem_unlock(s->c) != CACHEM_OK) {
            s->failures++;
            break;
        }
        s->stage = 1;
    }
    return NULL;
}

/* Closes `s->c` while another thread keeps calling through it: BUSY while
 * a call or a lock is in progress, then closed; the other thread then gets
 * MISUSE. Memory-safe at every point (ASan watches). */
static void close_under_fire(void *(*fn)(void *)) {
    cachem_error_t err;
    struct shared s = {0};
    s.c = cachem_open("fire", SIZE, NULL, &err);
    CHECK(s.c != NULL);
    s.owner = 7;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fn, &s) == 0);
    while (s.stage == 0)
        usleep(100);
    int busy = 0;
    cachem_error_t e;
    for (int i = 0; (e = cachem_close(s.c)) == CACHEM_E_BUSY && i < 10000000; i++)
        busy++;
    CHECK(e == CACHEM_OK);
    pthread_join(t, NULL);
    CHECK(s.failures == 0);
    fprintf(stderr, "   closed after %d BUSY answers\n", busy);
    OK(cachem_destroy("fire", NULL));
}

static void test_threads(void) {
    section("two threads sharing a handle");
    cachem_error_t err;
    struct shared s = {0};
    s.c = cachem_open("threads", SIZE, NULL, &err);
    CHECK(s.c != NULL);
    OK(cachem_id(s.c, "threads", &s.owner));
    s.n = 500;
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, worker, &s) == 0);
    CHECK(pthread_create(&t2, NULL, worker, &s) == 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(s.failures == 0);
    CHECK(records(s.c) == 500);
    OK(cachem_verify(s.c));

    OK(cachem_lock(s.c));
    CHECK(pthread_create(&t1, NULL, unlock_from_other_thread, &s) == 0);
    pthread_join(t1, NULL);
    CHECK(s.failures == 0);
    OK(cachem_unlock(s.c));

    /* A thread that exits holding the lock releases it. */
    CHECK(pthread_create(&t1, NULL, exit_holding_lock, &s) == 0);
    pthread_join(t1, NULL);
    CHECK(s.failures == 0);
    OK(cachem_lock(s.c));
    OK(cachem_unlock(s.c));
    OK(cachem_close(s.c));
    OK(cachem_destroy("threads", NULL));

    section("close while another thread keeps calling");
    close_under_fire(hammer);
    close_under_fire(lock_hammer);
}

/* ---- processes ---------------------------------------------------------- */

static void test_fork(void) {
    section("fork: children insert and exit, or are SIGKILLed holding the lock");
    cachem_error_t err;
    cachem_t *c = cachem_open(NULL, SIZE, NULL, &err); /* anonymous, shared by fork */
    CHECK(c != NULL);
    cachem_id_t owner;
    OK(cachem_id(c, "children", &owner)); /* resolved before the fork */

    enum { KIDS = 4 };
    pid_t kids[KIDS];
    for (int k = 0; k < KIDS; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0);
        if (kids[k] == 0) {
            /* The registry works in a child forked after the parent used
             * it: the parent's name (memoised), a new shared name, fresh
             * unique ids. Answers go back through the exit status. */
            cachem_id_t same, shared, u1, u2;
            OK(cachem_id(c, "children", &same));
            OK(cachem_id(c, "made by a child", &shared));
            OK(cachem_id(c, NULL, &u1));
            OK(cachem_id(c, NULL, &u2));
            if (same != owner || u1 == u2 || shared == owner)
                _exit(5);
            /* Two owned records and three process-scoped ones, then _exit
             * without closing: as a crashed or careless child. */
            OK(cachem_lock(c));
            OK(cachem_add(c, "owned", 5, owner, NULL));
            OK(cachem_add(c, "owned", 5, owner, NULL));
            OK(cachem_unlock(c));
            for (int j = 0; j < 3; j++)
                OK(cachem_add(c, "scoped", 6, CACHEM_INVALID_ID, NULL));
            cachem_index_t i = CACHEM_INVALID_INDEX;
            int mine = 0;
            while (cachem_get_pid(c, owner, i, &i) == CACHEM_OK && i != CACHEM_INVALID_INDEX)
                mine++;
            _exit(mine == 2 ? 0 : 3);
        }
    }
    for (int k = 0; k < KIDS; k++) {
        int st = reap_child(kids[k]);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    CHECK(records(c) == KIDS * 5);
    cachem_stat_t s;
    OK(cachem_stat(c, &s));
    CHECK(s.processes == KIDS && s.dead_processes == KIDS);
    cachem_reap_report_t rep;
    OK(cachem_reap(c, &rep));
    CHECK(rep.processes == KIDS && rep.records == KIDS * 3);
    CHECK(records(c) == KIDS * 2); /* owned records stay */

    /* A child killed with SIGKILL while it holds the lock mid-work. */
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t k = fork();
    CHECK(k >= 0);
    if (k == 0) {
        close(pipefd[0]);
        OK(cachem_add(c, "doomed", 6, CACHEM_INVALID_ID, NULL));
        OK(cachem_lock(c));
        OK(cachem_add(c, "doomed", 6, CACHEM_INVALID_ID, NULL));
        if (write(pipefd[1], "L", 1) != 1)
            _exit(4);
        for (;;)
            pause();
    }
    close(pipefd[1]);
    char ch;
    CHECK(read(pipefd[0], &ch, 1) == 1);
    close(pipefd[0]);
    CHECK(kill(k, SIGKILL) == 0);
    int st = reap_child(k);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    /* The next lock recovers and reaps the dead holder's records. */
    OK(cachem_lock(c));
    OK(cachem_verify(c));
    OK(cachem_unlock(c));
    OK(cachem_stat(c, &s));
    CHECK(s.recoveries >= 1);
    CHECK(s.records == KIDS * 2);

    /* The name the children registered is one id for everyone. */
    cachem_id_t later, again;
    OK(cachem_id(c, "children", &later));
    CHECK(later == owner);
    OK(cachem_id(c, "made by a child", &later));
    pid_t k2 = fork();
    CHECK(k2 >= 0);
    if (k2 == 0) {
        OK(cachem_id(c, "made by a child", &again));
        _exit(again == later ? 0 : 6);
    }
    st = reap_child(k2);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    OK(cachem_close(c));
}

/* ---- snapshots ---------------------------------------------------------- */

static void test_snapshots(void) {
    section("save and restore");
    cachem_error_t err;
    char snap[4096], bad[4096];
    snprintf(snap, sizeof snap, "%s/records.snap", dir);
    snprintf(bad, sizeof bad, "%s/bad.snap", dir);

    cachem_t *c = cachem_open("snapsrc", SIZE, NULL, &err);
    CHECK(c != NULL);
    cachem_id_t a, u;
    OK(cachem_id(c, "mod_slot", &a));
    OK(cachem_id(c, NULL, &u));
    OK(cachem_add(c, "alpha", 5, a, NULL));
    OK(cachem_add(c, "beta", 4, a, NULL));
    OK(cachem_add(c, "unnamed", 7, u, NULL));
    OK(cachem_add(c, "process", 7, CACHEM_INVALID_ID, NULL)); /* not saved */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, NULL));
    EXPECT(CACHEM_E_IO, cachem_save(c, "/nonexistent-dir/x.snap"));
    /* Paths naming no file are bad arguments (issue 23). */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, ""));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, "/"));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, "."));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, ".."));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, dir));
    char slash[4096];
    snprintf(slash, sizeof slash, "%s/sub/", dir);
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_save(c, slash));
    OK(cachem_save(c, snap));
    OK(cachem_close(c));

    /* A fresh region with other ids: names are resolved again. */
    cachem_t *d = cachem_open("snapdst", SIZE, NULL, &err);
    CHECK(d != NULL);
    cachem_id_t pad, a2;
    OK(cachem_id(d, "someone else", &pad));
    OK(cachem_restore(d, snap));
    OK(cachem_id(d, "mod_slot", &a2));
    char buf[64];
    size_t n;
    cachem_index_t i = CACHEM_INVALID_INDEX;
    int seen = 0;
    while (cachem_get_id(d, a2, i, &i) == CACHEM_OK && i != CACHEM_INVALID_INDEX) {
        OK(cachem_read(d, i, buf, sizeof buf, &n));
        CHECK((n == 5 && memcmp(buf, "alpha", 5) == 0) || (n == 4 && memcmp(buf, "beta", 4) == 0));
        seen++;
    }
    CHECK(seen == 2);
    CHECK(records(d) == 3);

    /* Damaged: one byte flipped. Foreign: not a snapshot. Nothing changes. */
    FILE *in = fopen(snap, "rb");
    CHECK(in != NULL);
    static unsigned char bytes[65536];
    size_t len = fread(bytes, 1, sizeof bytes, in);
    fclose(in);
    CHECK(len > 40);
    bytes[len / 2] ^= 0x20;
    FILE *out = fopen(bad, "wb");
    CHECK(out != NULL && fwrite(bytes, 1, len, out) == len);
    fclose(out);
    EXPECT(CACHEM_E_SNAPSHOT, cachem_restore(d, bad));
    CHECK(strstr(cachem_last_error_message(d), "checksum") != NULL);
    out = fopen(bad, "wb");
    CHECK(out != NULL);
    fputs("this is not a snapshot at all, just text\n", out);
    fclose(out);
    EXPECT(CACHEM_E_SNAPSHOT, cachem_restore(d, bad));
    CHECK(strstr(cachem_last_error_message(d), "not a cachem snapshot") != NULL);
    EXPECT(CACHEM_E_IO, cachem_restore(d, "/nonexistent-dir/x.snap"));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_restore(d, NULL));
    CHECK(records(d) == 3);
    OK(cachem_verify(d));
    OK(cachem_close(d));
    OK(cachem_destroy("snapsrc", NULL));
    OK(cachem_destroy("snapdst", NULL));
}


static cachem_t *busy_handle;
static volatile int busy_stop;

static void *busy_ids(void *arg) {
    (void)arg;
    cachem_id_t id;
    while (!busy_stop)
        cachem_id(busy_handle, NULL, &id);
    return NULL;
}

static void *busy_calls(void *arg) {
    (void)arg;
    cachem_index_t i;
    while (!busy_stop)
        cachem_get_id(busy_handle, 1, CACHEM_INVALID_INDEX, &i);
    return NULL;
}

/* Forks while another thread is inside a call: the child must be able to
 * resolve ids (no lock held across a registry cycle) and close the handle
 * (no use count inherited from the other thread). */
static void fork_while_busy(void *(*fn)(void *), int want_id) {
    busy_stop = 0;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fn, NULL) == 0);
    for (int k = 0; k < 5; k++) {
        usleep(20000);
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) {
            alarm(20); /* a hang dies of SIGALRM */
            cachem_error_t r;
            if (want_id) {
                cachem_id_t x;
                r = cachem_id(busy_handle, "named-in-a-child", &x);
            } else {
                r = cachem_close(busy_handle);
            }
            _exit(r == CACHEM_OK ? 0 : 10 + (int)r);
        }
        int st = reap_child(p);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fprintf(stderr, "fork %d while busy: status %d\n", k, st);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    busy_stop = 1;
    CHECK(pthread_join(t, NULL) == 0);
}

static void test_review_findings(void) {
    section("fork while another thread is in cachem_id / another call");
    cachem_error_t err;
    busy_handle = cachem_open(NULL, SIZE, NULL, &err);
    CHECK(busy_handle != NULL);
    cachem_id_t warm;
    OK(cachem_id(busy_handle, "warm", &warm));
    fork_while_busy(busy_ids, 1);
    fork_while_busy(busy_calls, 0);

    section("a bad owner name is an invalid argument");
    cachem_id_t id;
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_id(busy_handle, "", &id));
    char longname[5000];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_id(busy_handle, longname, &id));

    section("cachem_add from a pointer into the region, while a reap moves it");
    cachem_t *c = cachem_open(NULL, 1u << 16, NULL, &err);
    CHECK(c != NULL);
    char buf[1000];
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        /* Ten process-scoped records of a process that dies: reapable. */
        cachem_index_t i;
        memset(buf, 'C', sizeof buf);
        for (int k = 0; k < 10; k++)
            if (cachem_add(c, buf, sizeof buf, CACHEM_INVALID_ID, &i) != CACHEM_OK)
                _exit(1);
        _exit(0);
    }
    CHECK(WIFEXITED(reap_child(p)));
    cachem_index_t r, i, copy;
    memset(buf, 'A', sizeof buf);
    OK(cachem_add(c, buf, sizeof buf, 5, &r));
    memset(buf, 'B', sizeof buf);
    for (;;) { /* fill until the copy only fits after reaping the dead child */
        cachem_stat_t st;
        OK(cachem_stat(c, &st));
        if (st.free_bytes < 1040 + 200)
            break;
        OK(cachem_add(c, buf, sizeof buf, 6, &i));
    }
    OK(cachem_lock(c));
    void *ptr;
    size_t len;
    OK(cachem_get(c, r, &ptr, &len));
    OK(cachem_add(c, ptr, len, 5, &copy));
    OK(cachem_get(c, copy, &ptr, &len));
    CHECK(len == sizeof buf);
    /* cachem_read into the region, over the record itself. */
    size_t n;
    OK(cachem_read(c, copy, ptr, len, &n));
    OK(cachem_unlock(c));
    char out[1000];
    OK(cachem_read(c, copy, out, sizeof out, &n));
    CHECK(n == sizeof out);
    for (size_t k = 0; k < n; k++)
        CHECK(out[k] == 'A');
    OK(cachem_close(c));
    OK(cachem_close(busy_handle));

    section("the compaction policy is chosen at creation");
    for (int eager = 0; eager <= 1; eager++) {
        cachem_options_t o = CACHEM_OPTIONS_INIT;
        o.compaction = eager ? CACHEM_COMPACTION_EAGER : CACHEM_COMPACTION_DEFERRED;
        cachem_t *p2 = cachem_open(NULL, 1u << 16, &o, &err);
        CHECK(p2 != NULL);
        cachem_index_t a, b;
        OK(cachem_add(p2, "first record", 12, 3, &a));
        OK(cachem_add(p2, "second record", 13, 3, &b));
        OK(cachem_delete(p2, a));
        cachem_stat_t st;
        OK(cachem_stat(p2, &st));
        CHECK(st.compaction == (uint64_t)o.compaction);
        CHECK(st.records == 1);
        CHECK(eager ? st.dead_bytes == 0 && st.dead_blocks == 0 : st.dead_bytes > 0 && st.dead_blocks == 1);
        EXPECT(CACHEM_E_STALE, cachem_delete(p2, a));
        OK(cachem_verify(p2));
        OK(cachem_close(p2));
    }
    cachem_options_t bad = CACHEM_OPTIONS_INIT;
    bad.compaction = 7;
    CHECK(cachem_open(NULL, 1u << 16, &bad, &err) == NULL && err == CACHEM_E_INVALID_ARGUMENT);
}

/* The rows of cachem_status_owners / cachem_status_pids, rebuilt as the
 * JSON text cachem_status_json writes (compact, keys sorted). */
typedef struct {
    cachem_t *c;
    char text[4096];
    size_t len;
    int calls;
    int stop_after; /* 0: never */
    int reenter;    /* call cachem functions from inside the callback */
} rows_t;

static void append(rows_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(rows_t *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->text + r->len, sizeof r->text - r->len, fmt, ap);
    va_end(ap);
    CHECK(n >= 0 && (size_t)n < sizeof r->text - r->len);
    r->len += (size_t)n;
}

static void reenter(cachem_t *c) {
    /* No cachem lock is held during the callback: all of these work. */
    cachem_id_t id;
    cachem_stat_t st;
    size_t n = 0;
    OK(cachem_lock(c));
    OK(cachem_stat(c, &st));
    OK(cachem_unlock(c));
    OK(cachem_id(c, "from-a-callback", &id));
    OK(cachem_status_pids(c, count_pid, &n));
    CHECK(n > 0);
}

static int owner_row(const cachem_owner_usage_t *u, void *arg) {
    rows_t *r = arg;
    r->calls++;
    if (r->reenter)
        reenter(r->c);
    append(r, "%s{\"bytes\":%llu,\"id\":%u,\"name\":", r->calls > 1 ? "," : "",
           (unsigned long long)u->bytes, (unsigned)u->id);
    if (u->name == NULL) {
        CHECK(u->name_len == 0);
        append(r, "null");
    } else {
        CHECK(strlen(u->name) == u->name_len);
        append(r, "\"");
        for (const char *p = u->name; *p; p++)
            append(r, "%s%c", (*p == '"' || *p == '\\') ? "\\" : "", *p);
        append(r, "\"");
    }
    append(r, ",\"records\":%llu}", (unsigned long long)u->records);
    return r->stop_after && r->calls >= r->stop_after;
}

static int pid_row(const cachem_pid_usage_t *u, void *arg) {
    rows_t *r = arg;
    r->calls++;
    if (r->reenter)
        reenter(r->c);
    append(r, "%s{\"alive\":%s,\"bytes\":%llu,\"pid\":%u,\"reapable\":%llu,\"records\":%llu,"
           "\"start_time\":%llu}",
           r->calls > 1 ? "," : "", u->alive ? "true" : "false", (unsigned long long)u->bytes,
           (unsigned)u->pid, (unsigned long long)u->reapable, (unsigned long long)u->records,
           (unsigned long long)u->start_time);
    return r->stop_after && r->calls >= r->stop_after;
}

static void expect_in(const char *json, const char *part) {
    if (strstr(json, part) == NULL) {
        fprintf(stderr, "not in the JSON report: %s\nreport: %s\n", part, json);
        _exit(1);
    }
}

static void test_status_api(void) {
    section("status without JSON: cachem_status, _owners, _pids agree with cachem_status_json");
    cachem_error_t err;
    cachem_t *c = cachem_open(NULL, SIZE, NULL, &err); /* anonymous, shared by fork */
    CHECK(c != NULL);
    cachem_id_t alpha, odd, unnamed;
    OK(cachem_id(c, "alpha", &alpha));
    OK(cachem_id(c, "q\"uo\\te <b>", &odd));
    OK(cachem_id(c, NULL, &unnamed));
    OK(cachem_add(c, "twelve bytes", 12, alpha, NULL));
    OK(cachem_add(c, "four", 4, alpha, NULL));
    OK(cachem_add(c, "odd", 3, odd, NULL));
    OK(cachem_add(c, "", 0, unnamed, NULL));
    OK(cachem_add(c, "mine", 4, CACHEM_INVALID_ID, NULL));
    /* A child that inserts an owned record and exits: a dead pid. */
    pid_t dead = fork();
    CHECK(dead >= 0);
    if (dead == 0) {
        if (cachem_add(c, "left behind", 11, alpha, NULL) != CACHEM_OK)
            _exit(3);
        _exit(0);
    }
    CHECK(reap_child(dead) == 0);
    /* A child that stays alive until told: a live pid besides ours. */
    int go[2], ready[2];
    CHECK(pipe(go) == 0 && pipe(ready) == 0);
    pid_t live = fork();
    CHECK(live >= 0);
    if (live == 0) {
        char b = 0;
        close(go[1]);
        close(ready[0]);
        if (cachem_add(c, "live", 4, odd, NULL) != CACHEM_OK)
            _exit(3);
        if (write(ready[1], "x", 1) != 1 || read(go[0], &b, 1) < 0)
            _exit(4);
        _exit(0);
    }
    close(go[0]);
    close(ready[1]);
    char b;
    CHECK(read(ready[0], &b, 1) == 1);

    char json[8192];
    OK(cachem_status_json(c, json, sizeof json, NULL));
    cachem_status_t st = CACHEM_STATUS_INIT;
    OK(cachem_status(c, &st));
    CHECK(st.struct_size == sizeof st);
    cachem_stat_t stt;
    OK(cachem_stat(c, &stt));
    /* The dead child left only an owned record: a kept record, nothing to
       reap, so it is not in the alert figure (issue 23). */
    CHECK(st.records == 7 && st.owners == 4 && st.processes == 3 && st.dead_processes == 0);
    CHECK(st.dead_pids_kept == 1);
    {
        /* The first version of the struct (without dead_pids_kept) is
           still accepted, and nothing past it is written. */
        cachem_status_t old;
        memset(&old, 0xAB, sizeof old);
        old.struct_size = (uint32_t)offsetof(cachem_status_t, dead_pids_kept);
        OK(cachem_status(c, &old));
        CHECK(old.records == st.records && old.dead_processes == 0);
        CHECK(old.dead_pids_kept == 0xABABABABABABABABull);
    }
    CHECK(st.pid_rows == 3 && st.max_record_len == cachem_max_record_len(c));
    CHECK(st.size == stt.size && st.used_bytes == stt.used_bytes && st.free_bytes == stt.free_bytes);
    CHECK(st.slots == stt.slots && st.free_slots == stt.free_slots && st.table_bytes == stt.table_bytes);
    CHECK(st.header_bytes == stt.header_bytes && st.generation == stt.generation);
    CHECK(st.processes == stt.processes && st.dead_processes == stt.dead_processes);
    CHECK(st.compaction == CACHEM_COMPACTION_DEFERRED && st.recovery_required == 0);
    char part[1024];
    snprintf(part, sizeof part,
             "\"counters\":{\"bytes_moved\":%llu,\"compactions\":%llu,\"inserts\":%llu,"
             "\"largest_compaction\":%llu,\"reaped_records\":%llu,\"recoveries\":%llu,"
             "\"removes\":%llu},\"dead_blocks\":%llu,\"dead_bytes\":%llu,"
             "\"dead_pids_with_kept_records\":%llu,\"dead_reapable_processes\":%llu,\"free_bytes\":%llu,"
             "\"free_slots\":%llu,\"generation\":\"%016llx\",\"header_bytes\":%llu,\"lock_bytes\":%llu,",
             (unsigned long long)st.bytes_moved, (unsigned long long)st.compactions,
             (unsigned long long)st.inserts, (unsigned long long)st.largest_compaction,
             (unsigned long long)st.reaped_records, (unsigned long long)st.recoveries,
             (unsigned long long)st.removes, (unsigned long long)st.dead_blocks,
             (unsigned long long)st.dead_bytes, (unsigned long long)st.dead_pids_kept,
             (unsigned long long)st.dead_processes, (unsigned long long)st.free_bytes,
             (unsigned long long)st.free_slots, (unsigned long long)st.generation,
             (unsigned long long)st.header_bytes, (unsigned long long)st.lock_bytes);
    expect_in(json, part);
    snprintf(part, sizeof part,
             "\"records\":%llu,\"recovery_required\":false,\"size\":%llu,\"slots\":%llu,"
             "\"table_bytes\":%llu,\"used_bytes\":%llu}",
             (unsigned long long)st.records, (unsigned long long)st.size, (unsigned long long)st.slots,
             (unsigned long long)st.table_bytes, (unsigned long long)st.used_bytes);
    expect_in(json, part);
    char boot[64] = "\"boot_id\":\"";
    for (int i = 0; i < 16; i++)
        snprintf(boot + strlen(boot), sizeof boot - strlen(boot), "%02x", st.boot_id[i]);
    expect_in(json, boot);
    expect_in(json, "\"compaction\":\"deferred\"");

    /* The rows, in the report's order, with re-entrant callbacks. */
    static rows_t r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.reenter = 1;
    append(&r, "\"owners\":[");
    OK(cachem_status_owners(c, owner_row, &r));
    append(&r, "],\"path\":null,\"pids\":[");
    CHECK(r.calls == 4);
    r.calls = 0;
    OK(cachem_status_pids(c, pid_row, &r));
    append(&r, "]");
    CHECK(r.calls == 3);
    expect_in(json, r.text);
    CHECK(strstr(r.text, "\"alive\":false") != NULL && strstr(r.text, "q\\\"uo\\\\te <b>") != NULL);

    /* A non-zero return stops the walk; the call still succeeds. */
    memset(&r, 0, sizeof r);
    r.stop_after = 2;
    OK(cachem_status_owners(c, owner_row, &r));
    CHECK(r.calls == 2);
    memset(&r, 0, sizeof r);
    r.stop_after = 1;
    OK(cachem_status_pids(c, pid_row, &r));
    CHECK(r.calls == 1);

    /* Under this thread's lock: the snapshot uses it (no self-deadlock). */
    size_t n = 0;
    OK(cachem_lock(c));
    OK(cachem_status(c, &st));
    OK(cachem_status_owners(c, count_owner, &n));
    OK(cachem_unlock(c));
    CHECK(n == 4);

    /* Misuse. */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status(c, NULL));
    st.struct_size = 8;
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status(c, &st));
    CHECK(strstr(cachem_last_error_message(c), "struct_size") != NULL);
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status_owners(c, NULL, NULL));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_status_pids(c, NULL, NULL));

    CHECK(write(go[1], "x", 1) == 1);
    close(go[1]);
    close(ready[0]);
    CHECK(reap_child(live) == 0);
    OK(cachem_close(c));
}

/* ----- issue 23: what a module author hits first --------------------- */

static void test_too_many_handles(void) {
    section("the 4097th handle");
    enum { MAX = 4096 };
    static cachem_t *hs[MAX];
    cachem_error_t err = CACHEM_OK;
    int n = 0;
    while (n < MAX) {
        hs[n] = cachem_open(NULL, 65536, NULL, &err);
        if (hs[n] == NULL)
            break;
        n++;
    }
    /* Every slot of the table, then a distinct code (not INVALID_ARGUMENT). */
    CHECK(n == MAX);
    CHECK(cachem_open(NULL, 65536, NULL, &err) == NULL);
    EXPECT(CACHEM_E_TOO_MANY_HANDLES, err);
    CHECK(strstr(cachem_last_error_message(NULL), "4096") != NULL);
    OK(cachem_close(hs[0]));
    hs[0] = cachem_open(NULL, 65536, NULL, &err);
    CHECK(hs[0] != NULL);
    for (int i = 0; i < n; i++)
        OK(cachem_close(hs[i]));
}

static void test_walk_afters(void) {
    section("get_id / get_pid with foreign afters");
    cachem_error_t err;
    cachem_t *c = cachem_open("afters", SIZE, NULL, &err);
    cachem_t *o = cachem_open("afters-other", SIZE, NULL, &err);
    CHECK(c != NULL && o != NULL);
    cachem_id_t a, b;
    OK(cachem_id(c, "walk-a", &a));
    OK(cachem_id(c, "walk-b", &b));
    cachem_index_t a1, a2, b1, i;
    OK(cachem_add(c, "a1", 2, a, &a1));
    OK(cachem_add(c, "a2", 2, a, &a2));
    OK(cachem_add(c, "b1", 2, b, &b1));
    /* The normal walk. */
    OK(cachem_get_id(c, a, a1, &i));
    CHECK(i == a2);
    OK(cachem_get_pid(c, a, a1, &i));
    CHECK(i == a2);
    /* A live record of another owner can never continue a walk of a. */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_id(c, a, b1, &i));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_pid(c, a, b1, &i));
    /* A slot far beyond any table of this region: forged. */
    cachem_index_t forged = ((cachem_index_t)7 << 32) | 0x7fffffffu;
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_id(c, a, forged, &i));
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_pid(c, a, forged, &i));
    /* A live record of a inserted by another process: not ours to walk. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        cachem_index_t x;
        _exit(cachem_add(c, "child", 5, a, &x) == CACHEM_OK && cachem_close(c) == CACHEM_OK &&
                      write(STDOUT_FILENO, "", 0) == 0
                  ? 0
                  : 1);
    }
    CHECK(reap_child(pid) == 0);
    cachem_index_t theirs = CACHEM_INVALID_INDEX;
    OK(cachem_get_id(c, a, a2, &theirs));
    CHECK(theirs != CACHEM_INVALID_INDEX);
    OK(cachem_get_id(c, a, theirs, &i)); /* get_id walks every process's */
    EXPECT(CACHEM_E_INVALID_ARGUMENT, cachem_get_pid(c, a, theirs, &i));
    /* A removed record's index goes on where it stood (the note). */
    OK(cachem_delete(c, a1));
    OK(cachem_get_id(c, a, a1, &i));
    CHECK(i == a2);
    /* An index from another region names no live record here: it starts
       over from the owner's first record, as documented. */
    cachem_index_t elsewhere;
    OK(cachem_add(o, "x", 1, a, &elsewhere));
    OK(cachem_add(o, "y", 1, a, &elsewhere));
    OK(cachem_delete(c, a2));
    OK(cachem_add(c, "a3", 2, a, &a2));
    OK(cachem_get_id(c, a, CACHEM_INVALID_INDEX, &a1));
    i = 0;
    err = cachem_get_id(c, a, elsewhere, &i);
    CHECK(err == CACHEM_OK || err == CACHEM_E_INVALID_ARGUMENT);
    if (err == CACHEM_OK)
        CHECK(i == a1 || i == CACHEM_INVALID_INDEX || i == a2);
    OK(cachem_close(o));
    OK(cachem_close(c));
    OK(cachem_destroy("afters", NULL));
    OK(cachem_destroy("afters-other", NULL));
}

static cachem_t *purge_handle;
static volatile sig_atomic_t purge_calls, purge_failures;

static void purge_on_signal(int sig) {
    (void)sig;
    size_t removed = 12345;
    cachem_error_t e = cachem_purge_process(purge_handle, &removed);
    purge_calls++;
    if (e != CACHEM_OK || removed == 12345)
        purge_failures++;
}

static int purge_in_callback(const cachem_owner_usage_t *u, void *arg) {
    (void)u;
    int *done = arg;
    if (!*done) {
        *done = 1;
        raise(SIGUSR2); /* the handler runs inside cachem_status_owners */
    }
    return 0;
}

static uint64_t process_records(cachem_t *c) {
    cachem_index_t i = CACHEM_INVALID_INDEX;
    uint64_t n = 0;
    while (cachem_get_pid(c, CACHEM_INVALID_ID, i, &i) == CACHEM_OK && i != CACHEM_INVALID_INDEX)
        n++;
    return n;
}

static void test_purge_from_a_signal(void) {
    section("cachem_purge_process from a signal handler inside a call");
    cachem_error_t err;
    purge_handle = cachem_open("purge-sig", SIZE, NULL, &err);
    CHECK(purge_handle != NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = purge_on_signal;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0);
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);

    /* Deterministic: the handler runs inside a call (a status callback). */
    OK(cachem_add(purge_handle, "p", 1, CACHEM_INVALID_ID, NULL));
    OK(cachem_add(purge_handle, "p", 1, CACHEM_INVALID_ID, NULL));
    CHECK(process_records(purge_handle) == 2);
    int done = 0;
    OK(cachem_status_owners(purge_handle, purge_in_callback, &done));
    CHECK(done == 1 && purge_calls == 1 && purge_failures == 0);
    /* The deferred purge ran when cachem_status_owners returned. */
    CHECK(process_records(purge_handle) == 0);

    /* A timer interrupting a loop of calls, most of them inside one. */
    cachem_id_t owner;
    OK(cachem_id(purge_handle, "loop", &owner));
    struct itimerval it = {{0, 200}, {0, 200}};
    purge_calls = 0;
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    char buf[64];
    size_t n;
    for (long k = 0; purge_calls < 300 && k < 50000000; k++) {
        cachem_index_t x;
        OK(cachem_add(purge_handle, "process", 7, CACHEM_INVALID_ID, NULL));
        OK(cachem_add(purge_handle, "payload", 7, owner, &x));
        OK(cachem_read(purge_handle, x, buf, sizeof buf, &n));
        OK(cachem_lock(purge_handle));
        OK(cachem_delete(purge_handle, x));
        OK(cachem_unlock(purge_handle));
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    CHECK(setitimer(ITIMER_REAL, &off, NULL) == 0);
    CHECK(purge_calls >= 300);
    CHECK(purge_failures == 0);
    /* The last purge (direct or deferred) left no process-scoped record
       added before it; one more purge now, outside any call, empties it. */
    OK(cachem_purge_process(purge_handle, NULL));
    CHECK(process_records(purge_handle) == 0);
    OK(cachem_verify(purge_handle));
    signal(SIGALRM, SIG_DFL);
    signal(SIGUSR2, SIG_DFL);
    OK(cachem_close(purge_handle));
    OK(cachem_destroy("purge-sig", NULL));
}

static void test_issue23(void) {
    test_too_many_handles();
    test_walk_afters();
    test_purge_from_a_signal();
}

int main(void) {
    dir = getenv("CACHEM_DIR");
    if (dir == NULL || dir[0] != '/') {
        fprintf(stderr, "set CACHEM_DIR to an absolute scratch directory\n");
        return 2;
    }
    test_strerror();
    test_open_errors();
    test_bad_handles();
    test_records();
    test_threads();
    test_snapshots();
    test_fork();
    test_review_findings();
    test_status_api();
    test_issue23();
    fprintf(stderr, "all C checks passed\n");
    return 0;
}
