/* Issue 22: owner ids in a multi-threaded process, under AddressSanitizer.
 *
 * 1. fork while another thread is inside cachem_id: the child resolves
 *    the parent's names (same ids) and new ones, at once;
 * 2. one thread resolves new names while two others malloc/free (the forked
 *    registry helper used to deadlock on ASan's allocator lock), 8 threads
 *    resolve new names at once, threads allocate during cachem_status_json;
 * 3. new names need no helper: nothing appears in the runtime directory;
 * 6. a grandchild in a new pid namespace (unshare + fork) is refused
 *    process-scoped records through the inherited handle.
 * Every wait is bounded by the harness (c_programs.rs). */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>

#include "check.h"

#define SIZE (1u << 20)

static cachem_t *c;
static volatile int stop;

static void *allocator(void *arg) {
    (void)arg;
    while (!stop) {
        void *p[16];
        for (int i = 0; i < 16; i++)
            p[i] = malloc(64 + 32 * i);
        for (int i = 0; i < 16; i++)
            free(p[i]);
    }
    return NULL;
}

static void *new_names(void *arg) {
    long t = (long)arg;
    char name[64];
    for (int i = 0; i < 200; i++) {
        cachem_id_t id = CACHEM_INVALID_ID, again = CACHEM_INVALID_ID;
        snprintf(name, sizeof name, "thread-%ld-name-%d", t, i);
        OK(cachem_id(c, name, &id));
        CHECK(id != CACHEM_INVALID_ID);
        OK(cachem_id(c, name, &again));
        CHECK(again == id);
    }
    return NULL;
}

/* Resolves names the process knows, over and over: always inside
 * cachem_id, never allocating (a fork while another thread is inside
 * malloc would leave ASan's allocator locked in the child, whatever the
 * child then calls: POSIX allows a child of a threaded process only
 * async-signal-safe calls). */
static void *busy_ids(void *arg) {
    (void)arg;
    char name[64];
    for (unsigned i = 0; !stop; i++) {
        cachem_id_t id;
        snprintf(name, sizeof name, "thread-%u-name-%u", i % 8, i % 200);
        OK(cachem_id(c, name, &id));
    }
    return NULL;
}

static int wait_child(pid_t p) {
    int st = 0;
    CHECK(waitpid(p, &st, 0) == p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int files_in(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

int main(void) {
    cachem_error_t err = CACHEM_OK;
    const char *run = getenv("CACHEM_DIR");
    CHECK(run);
    c = cachem_open(NULL, SIZE, NULL, &err); /* anonymous: shared by fork */
    CHECK(c && err == CACHEM_OK);

    /* 2: new names while other threads allocate. */
    pthread_t a[2], t[8];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&a[i], NULL, allocator, NULL) == 0);
    new_names((void *)100L);
    {
        char buf[4096];
        size_t need = 0;
        for (int i = 0; i < 50; i++)
            OK(cachem_status_json(c, buf, sizeof buf, &need));
    }
    /* 2: 8 threads resolve new names at once (allocators still running). */
    for (long i = 0; i < 8; i++)
        CHECK(pthread_create(&t[i], NULL, new_names, (void *)i) == 0);
    for (int i = 0; i < 8; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    /* 3: no helper, no file. */
    CHECK(files_in(run) == 0);
    stop = 1;
    for (int i = 0; i < 2; i++)
        CHECK(pthread_join(a[i], NULL) == 0);
    stop = 0;

    /* 1: fork while a thread is inside cachem_id. */
    cachem_id_t known = CACHEM_INVALID_ID;
    OK(cachem_id(c, "thread-3-name-7", &known));
    pthread_t busy;
    CHECK(pthread_create(&busy, NULL, busy_ids, NULL) == 0);
    for (int k = 0; k < 10; k++) {
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) {
            char name[64];
            for (int i = 0; i < 50; i++) {
                cachem_id_t id = CACHEM_INVALID_ID;
                OK(cachem_id(c, "thread-3-name-7", &id));
                CHECK(id == known);
                snprintf(name, sizeof name, "child-%d-%d", k, i);
                OK(cachem_id(c, name, &id));
                CHECK(id != CACHEM_INVALID_ID && id != known);
            }
            _exit(0);
        }
        CHECK(wait_child(p) == 0);
    }
    stop = 1;
    CHECK(pthread_join(busy, NULL) == 0);
    /* The children's names are the parent's too. */
    {
        cachem_id_t x = CACHEM_INVALID_ID, y = CACHEM_INVALID_ID;
        OK(cachem_id(c, "child-9-49", &x));
        OK(cachem_id(c, "child-9-49", &y));
        CHECK(x == y && x != CACHEM_INVALID_ID);
    }

    /* 6: a grandchild in a new pid namespace, through the inherited handle. */
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        if (unshare(CLONE_NEWPID) != 0) {
            fprintf(stderr, "unshare(CLONE_NEWPID) needs root: skipped here\n");
            _exit(geteuid() == 0 ? 1 : 0);
        }
        pid_t g = fork();
        CHECK(g >= 0);
        if (g == 0) {
            cachem_index_t i = CACHEM_INVALID_INDEX;
            cachem_id_t owner = CACHEM_INVALID_ID;
            CHECK(getpid() == 1);
            EXPECT(CACHEM_E_PID_NAMESPACE, cachem_add(c, "x", 1, CACHEM_INVALID_ID, &i));
            /* A named owner's record is not judged by its pid: allowed. */
            OK(cachem_id(c, "ns-owner", &owner));
            OK(cachem_add(c, "y", 1, owner, &i));
            _exit(0);
        }
        _exit(wait_child(g));
    }
    CHECK(wait_child(p) == 0);

    OK(cachem_close(c));
    CHECK(files_in(run) == 0);
    printf("ids_threads: ok\n");
    return 0;
}
