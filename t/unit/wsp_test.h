/* A minimal unit test harness: each test_*.c is one program. */
#ifndef WSP_TEST_H
#define WSP_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <apr_general.h>
#include <apr_pools.h>

static int wsp_test_failures;
static int wsp_test_checks;

#define CHECK(cond) do { \
    wsp_test_checks++; \
    if (!(cond)) { \
        wsp_test_failures++; \
        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                #cond); \
    } \
} while (0)

#define CHECK_INT(a, b) do { \
    long long wsp_a_ = (long long)(a), wsp_b_ = (long long)(b); \
    wsp_test_checks++; \
    if (wsp_a_ != wsp_b_) { \
        wsp_test_failures++; \
        fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, \
                __LINE__, #a, wsp_a_, wsp_b_); \
    } \
} while (0)

#define CHECK_STR(a, b) do { \
    const char *wsp_a_ = (a), *wsp_b_ = (b); \
    wsp_test_checks++; \
    if (!wsp_a_ || !wsp_b_ || strcmp(wsp_a_, wsp_b_)) { \
        wsp_test_failures++; \
        fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, \
                __LINE__, #a, wsp_a_ ? wsp_a_ : "(null)", \
                wsp_b_ ? wsp_b_ : "(null)"); \
    } \
} while (0)

#define RUN(test) do { \
    int wsp_before_ = wsp_test_failures; \
    test(p); \
    printf("%s %s\n", wsp_test_failures == wsp_before_ ? "ok  " : "FAIL", \
           #test); \
} while (0)

/* main: apr init, a pool, run the tests, exit 1 on any failure. */
#define WSP_TEST_MAIN(body) \
int main(void) \
{ \
    apr_pool_t *p; \
    apr_initialize(); \
    apr_pool_create(&p, NULL); \
    body \
    printf("%d checks, %d failed\n", wsp_test_checks, wsp_test_failures); \
    apr_pool_destroy(p); \
    apr_terminate(); \
    return wsp_test_failures ? 1 : 0; \
}

#endif /* WSP_TEST_H */
