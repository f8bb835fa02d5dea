/* WSPersistHealthCheck: its arguments, a GET check's status line, and
 * what a result does to a backend and to selection (wsp_hcheck.c,
 * wsp_pool.c). */

#include <apr_strings.h>
#include <apr_tables.h>

#include "wsp_test.h"
#include "wsp_hcheck.h"

#define MS(n)  ((apr_interval_time_t)(n) * 1000)
#define SEC(n) ((apr_interval_time_t)(n) * APR_USEC_PER_SEC)
#define T0     ((apr_time_t)SEC(1700000000))

static const wsp_pool_opts_t opts = { MS(100), SEC(60), 100, 0 };

static void test_parse_defaults(apr_pool_t *p)
{
    wsp_hcheck_t hc;

    CHECK(wsp_hcheck_parse(p, "tcp", &hc) == NULL);
    CHECK_INT(hc.kind, WSP_HC_TCP);
    CHECK(hc.path == NULL);
    CHECK_INT(hc.interval, SEC(5));
    CHECK_INT(hc.timeout, SEC(2));
    CHECK_INT(hc.fails, 1);
    CHECK_INT(hc.passes, 1);
}

static void test_parse_kinds_and_options(apr_pool_t *p)
{
    wsp_hcheck_t hc;

    CHECK(wsp_hcheck_parse(p, "ws:/echo/ interval=10s timeout=250ms "
                           "fails=3 passes=2", &hc) == NULL);
    CHECK_INT(hc.kind, WSP_HC_WS);
    CHECK_STR(hc.path, "/echo/");
    CHECK_INT(hc.interval, SEC(10));
    CHECK_INT(hc.timeout, MS(250));
    CHECK_INT(hc.fails, 3);
    CHECK_INT(hc.passes, 2);
    CHECK(wsp_hcheck_parse(p, "GET:/health?deep=1 Interval=1m", &hc)
          == NULL);
    CHECK_INT(hc.kind, WSP_HC_GET);
    CHECK_STR(hc.path, "/health?deep=1");
    CHECK_INT(hc.interval, SEC(60));
    CHECK_STR(wsp_hcheck_kind_name(hc.kind), "get");
}

static void test_parse_short_interval_shortens_default_timeout(apr_pool_t *p)
{
    wsp_hcheck_t hc;

    CHECK(wsp_hcheck_parse(p, "tcp interval=1s", &hc) == NULL);
    CHECK_INT(hc.timeout, SEC(1));
    /* said explicitly, a longer timeout is an error */
    CHECK(wsp_hcheck_parse(p, "tcp interval=1s timeout=2s", &hc) != NULL);
}

static void test_parse_bad(apr_pool_t *p)
{
    static const char *bad[] = {
        "", "   ", "ping", "ws", "ws:", "ws:echo", "get:", "get:health",
        "tcp interval=", "tcp interval=soon", "tcp timeout=-1",
        "tcp timeout=0", "tcp fails=0", "tcp fails=101", "tcp passes=x",
        "tcp every=5s", "tcp 5s", "tcp interval=50ms timeout=10ms",
        "get:/a#b", "ws:/a\tb"
    };
    wsp_hcheck_t hc;
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *err = wsp_hcheck_parse(p, bad[i], &hc);
        CHECK(err != NULL);
        if (!err) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        }
    }
    CHECK(wsp_hcheck_parse(p, NULL, &hc) != NULL);
    /* the message quotes the word at fault */
    CHECK(strstr(wsp_hcheck_parse(p, "tcp fails=zero", &hc), "'fails=zero'")
          != NULL);
}

static int status_of(apr_pool_t *p, const char *s, int *st, const char **why)
{
    (void)p;
    return wsp_hcheck_status(s, strlen(s), st, why);
}

static void test_status_line(apr_pool_t *p)
{
    const char *why = NULL;
    int st = 0;

    CHECK_INT(status_of(p, "HTTP/1.1 200 OK\r\n", &st, &why), WSP_HS_OK);
    CHECK_INT(st, 200);
    CHECK_INT(status_of(p, "HTTP/1.0 503\r\n", &st, &why), WSP_HS_OK);
    CHECK_INT(st, 503);
    CHECK_INT(status_of(p, "HTTP/1.1 204 No Content\n", &st, &why),
              WSP_HS_OK);
    CHECK_INT(st, 204);
    CHECK_INT(status_of(p, "HTTP/1.1 20", &st, &why), WSP_HS_MORE);
    CHECK_INT(status_of(p, "HTT", &st, &why), WSP_HS_MORE);
    CHECK_INT(status_of(p, "", &st, &why), WSP_HS_MORE);
    CHECK_INT(status_of(p, "SSH-2.0-x", &st, &why), WSP_HS_FAIL);
    CHECK_INT(status_of(p, "HTTP/1.1 2x0 OK\r\n", &st, &why), WSP_HS_FAIL);
    CHECK_INT(status_of(p, "HTTP/1.1 2000\r\n", &st, &why), WSP_HS_FAIL);
    CHECK_INT(status_of(p, "HTTP/2 200\r\n", &st, &why), WSP_HS_FAIL);
}

static void test_status_line_bounded(apr_pool_t *p)
{
    apr_size_t n = WSP_HC_HEAD_MAX + 100;
    char *buf = apr_palloc(p, n);
    const char *why = NULL;
    int st = 0;

    memcpy(buf, "HTTP/1.1 200 ", 13);
    memset(buf + 13, 'x', n - 13);
    CHECK_INT(wsp_hcheck_status(buf, WSP_HC_HEAD_MAX - 1, &st, &why),
              WSP_HS_MORE);
    CHECK_INT(wsp_hcheck_status(buf, n, &st, &why), WSP_HS_FAIL);
    /* a line end past the bound is not looked for */
    buf[n - 1] = '\n';
    CHECK_INT(wsp_hcheck_status(buf, n, &st, &why), WSP_HS_FAIL);
}

/* A pool of two backends with local state and a check. */
static wsp_pool_t *mkpool(apr_pool_t *p, const wsp_hcheck_t *hc)
{
    wsp_pool_t *pool = apr_pcalloc(p, sizeof(*pool));
    int i;

    pool->name = "/ws/";
    pool->hcheck = hc;
    pool->backends = apr_array_make(p, 2, sizeof(wsp_backend_t *));
    for (i = 0; i < 2; ++i) {
        wsp_backend_t *be = apr_pcalloc(p, sizeof(*be));

        if (wsp_backend_parse(p, apr_psprintf(p, "ws://10.0.0.%d:9000/",
                                              i + 1), be)) {
            exit(2);
        }
        APR_ARRAY_PUSH(pool->backends, wsp_backend_t *) = be;
    }
    return pool;
}

static wsp_backend_t *be_at(wsp_pool_t *pool, int i)
{
    return APR_ARRAY_IDX(pool->backends, i, wsp_backend_t *);
}

static void test_fail_takes_out_pass_brings_back(apr_pool_t *p)
{
    wsp_hcheck_t hc;
    wsp_pool_t *pool;
    wsp_backend_t *a, *b, *got;
    apr_time_t next = 0;
    int i;

    wsp_hcheck_parse(p, "tcp", &hc);
    pool = mkpool(p, &hc);
    a = be_at(pool, 0);
    b = be_at(pool, 1);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "connect: refused", T0),
              WSP_HC_DOWN);
    CHECK_STR(wsp_backend_state_name(a->st), "error");
    CHECK_INT(a->st->hc_result, WSP_HCR_FAIL);
    CHECK_STR(a->st->hc_why, "connect: refused");
    CHECK_INT(a->st->errors, 0);        /* no client paid for it */
    for (i = 0; i < 4; ++i) {
        got = wsp_pool_acquire(pool, &opts, T0, NULL, &next);
        CHECK(got == b);
    }
    /* a second failure is no new change */
    CHECK_INT(wsp_pool_checked(pool, a, 0, "connect: refused", T0 + 1),
              WSP_HC_SAME);
    /* with b busy-excluded, nothing: and no back-off time to wait for */
    wsp_pool_checked(pool, b, 0, "timeout", T0);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next) == NULL);
    CHECK_INT(next, 0);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0 + 2), WSP_HC_UP);
    CHECK_STR(wsp_backend_state_name(a->st), "ok");
    CHECK_STR(a->st->hc_why, "");
    CHECK(wsp_pool_acquire(pool, &opts, T0 + 2, NULL, &next) == a);
}

static void test_fails_and_passes_in_a_row(apr_pool_t *p)
{
    wsp_hcheck_t hc;
    wsp_pool_t *pool;
    wsp_backend_t *a;

    wsp_hcheck_parse(p, "tcp fails=2 passes=3", &hc);
    pool = mkpool(p, &hc);
    a = be_at(pool, 0);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "x", T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "x", T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "x", T0), WSP_HC_DOWN);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "x", T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_SAME);
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0), WSP_HC_UP);
}

static void test_pass_clears_client_back_off(apr_pool_t *p)
{
    wsp_hcheck_t hc;
    wsp_pool_t *pool;
    wsp_backend_t *a;
    apr_time_t next = 0;

    wsp_hcheck_parse(p, "tcp", &hc);
    pool = mkpool(p, &hc);
    a = be_at(pool, 0);
    wsp_pool_failed(pool, &opts, a, T0);
    wsp_pool_failed(pool, &opts, a, T0 + SEC(1));
    CHECK_STR(wsp_backend_state_name(a->st), "error");
    CHECK(a->st->retry_at > T0 + SEC(1));
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0 + SEC(1)), WSP_HC_UP);
    CHECK_STR(wsp_backend_state_name(a->st), "ok");
    CHECK_INT(a->st->retry_at, 0);
    CHECK_INT(a->st->consecutive_errors, 2);   /* max_errors still counts */
    /* usable at once, not after the back-off */
    wsp_pool_checked(pool, be_at(pool, 1), 0, "x", T0);
    CHECK(wsp_pool_acquire(pool, &opts, T0 + SEC(1), NULL, &next) == a);
    /* a pass on a healthy backend changes nothing */
    CHECK_INT(wsp_pool_checked(pool, a, 1, NULL, T0 + SEC(2)), WSP_HC_SAME);
}

static void test_admin_and_removal_stay(apr_pool_t *p)
{
    wsp_hcheck_t hc;
    wsp_pool_t *pool;
    wsp_backend_t *a, *b;
    int i;

    wsp_hcheck_parse(p, "tcp", &hc);
    pool = mkpool(p, &hc);
    a = be_at(pool, 0);
    b = be_at(pool, 1);
    wsp_pool_disable(a->st);
    wsp_pool_checked(pool, a, 0, "x", T0);
    CHECK_STR(wsp_backend_state_name(a->st), "disabled");
    wsp_pool_checked(pool, a, 1, NULL, T0);
    CHECK_STR(wsp_backend_state_name(a->st), "disabled");
    wsp_pool_drain(a->st, 0);
    wsp_pool_checked(pool, a, 1, NULL, T0);
    CHECK_STR(wsp_backend_state_name(a->st), "drained");

    /* removed by max_errors: a pass does not bring it back */
    for (i = 0; i < 100; ++i) {
        wsp_pool_failed(pool, &opts, b, T0 + SEC(120) * i);
    }
    CHECK_STR(wsp_backend_state_name(b->st), "removed");
    CHECK_INT(wsp_pool_checked(pool, b, 1, NULL, T0), WSP_HC_SAME);
    CHECK_STR(wsp_backend_state_name(b->st), "removed");
}

static void test_freed_slot_left_alone(apr_pool_t *p)
{
    wsp_hcheck_t hc;
    wsp_pool_t *pool;
    wsp_backend_t *a;

    wsp_hcheck_parse(p, "tcp", &hc);
    pool = mkpool(p, &hc);
    a = be_at(pool, 0);
    /* the slot now holds another backend */
    apr_cpystrn(a->st->url, "ws://10.9.9.9:1/", WSP_URL_MAX);
    CHECK_INT(wsp_pool_checked(pool, a, 0, "x", T0), WSP_HC_SAME);
    CHECK_INT(a->st->hc_down, 0);
    CHECK_INT(a->st->hc_result, WSP_HCR_NONE);
}

WSP_TEST_MAIN(
    RUN(test_parse_defaults);
    RUN(test_parse_kinds_and_options);
    RUN(test_parse_short_interval_shortens_default_timeout);
    RUN(test_parse_bad);
    RUN(test_status_line);
    RUN(test_status_line_bounded);
    RUN(test_fail_takes_out_pass_brings_back);
    RUN(test_fails_and_passes_in_a_row);
    RUN(test_pass_clears_client_back_off);
    RUN(test_admin_and_removal_stay);
    RUN(test_freed_slot_left_alone);
)
