/* Tiny assertion helpers shared by the C tests. */
#ifndef CACHEM_TEST_CHECK_H
#define CACHEM_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cachem.h"

/* A condition that must hold. */
#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,      \
                    __LINE__, #cond, cachem_last_error_message(NULL));                   \
            _exit(1);                                                                    \
        }                                                                                \
    } while (0)

/* A call that must return `code`. */
#define EXPECT(code, call)                                                               \
    do {                                                                                 \
        cachem_error_t e_ = (call);                                                      \
        if (e_ != (code)) {                                                              \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s): %s\n",        \
                    __FILE__, __LINE__, #call, (int)e_, cachem_strerror((int)e_),        \
                    (int)(code), cachem_strerror((int)(code)),                           \
                    cachem_last_error_message(NULL));                                    \
            _exit(1);                                                                    \
        }                                                                                \
    } while (0)

/* A call that must succeed. */
#define OK(call) EXPECT(CACHEM_OK, call)

#endif
