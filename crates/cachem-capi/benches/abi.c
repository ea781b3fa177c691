/* The C side of benches/abi.rs: the same loops through libcachem.
 * Usage: abi ITERATIONS ROUNDS. Prints "get <ns/op>" and "add <ns/op>",
 * the median of ROUNDS rounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cachem.h"

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define MUST(call)                                                                 \
    do {                                                                           \
        if ((call) != CACHEM_OK) {                                                 \
            fprintf(stderr, "%s: %s\n", #call, cachem_last_error_message(NULL));  \
            abort();                                                               \
        }                                                                          \
    } while (0)

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    if (rounds > 64)
        rounds = 64;
    cachem_error_t e;
    cachem_t *c = cachem_open(NULL, 1 << 20, NULL, &e);
    if (c == NULL) {
        fprintf(stderr, "open: %s\n", cachem_last_error_message(NULL));
        return 1;
    }
    char rec[64];
    memset(rec, 'r', sizeof rec);
    cachem_index_t r;
    MUST(cachem_add(c, rec, sizeof rec, 1, &r));
    volatile unsigned long sink = 0;
    double get[64], add[64];
    for (int k = 0; k < rounds; k++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            void *p;
            size_t n;
            MUST(cachem_lock(c));
            MUST(cachem_get(c, r, &p, &n));
            sink += ((unsigned char *)p)[n - 1];
            MUST(cachem_unlock(c));
        }
        get[k] = (now_ns() - t0) / (double)iters;
        t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            cachem_index_t x;
            MUST(cachem_lock(c));
            MUST(cachem_add(c, rec, sizeof rec, 1, &x));
            MUST(cachem_delete(c, x));
            MUST(cachem_unlock(c));
        }
        add[k] = (now_ns() - t0) / (double)iters;
    }
    qsort(get, (size_t)rounds, sizeof get[0], cmp);
    qsort(add, (size_t)rounds, sizeof add[0], cmp);
    printf("get %.1f\nadd %.1f\n", get[rounds / 2], add[rounds / 2]);
    MUST(cachem_close(c));
    return sink == 0;
}
