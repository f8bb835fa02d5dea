/* Size, time, UUID and header token parsing. */
#include "wsp_test.h"
#include "wsp_parse.h"

static void test_size_plain(apr_pool_t *p)
{
    apr_off_t n = -1;

    (void)p;
    CHECK(wsp_parse_size("1000", &n) == NULL);
    CHECK_INT(n, 1000);
    CHECK(wsp_parse_size("0", &n) == NULL);
    CHECK_INT(n, 0);
}

static void test_size_suffixes(apr_pool_t *p)
{
    apr_off_t n = -1;

    (void)p;
    CHECK(wsp_parse_size("64K", &n) == NULL);
    CHECK_INT(n, 64 * 1024);
    CHECK(wsp_parse_size("64k", &n) == NULL);
    CHECK_INT(n, 64 * 1024);
    CHECK(wsp_parse_size("5M", &n) == NULL);
    CHECK_INT(n, 5 * 1024 * 1024);
    CHECK(wsp_parse_size("5mb", &n) == NULL);
    CHECK_INT(n, 5 * 1024 * 1024);
    CHECK(wsp_parse_size("1G", &n) == NULL);
    CHECK_INT(n, 1024LL * 1024 * 1024);
    CHECK(wsp_parse_size("2GB", &n) == NULL);
    CHECK_INT(n, 2048LL * 1024 * 1024);
    CHECK(wsp_parse_size("100B", &n) == NULL);
    CHECK_INT(n, 100);
}

static void test_size_bad(apr_pool_t *p)
{
    static const char *bad[] = {
        "", "-5", "-5M", "M", "5X", "5MM", "5BB", "5 M", " 5", "5 ", "1.5M",
        "0x10", "+5", "5KiB", "abc"
    };
    apr_off_t n = 42;
    apr_size_t i;

    (void)p;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *err = wsp_parse_size(bad[i], &n);
        CHECK(err != NULL);
        if (!err) {
            fprintf(stderr, "  accepted size \"%s\"\n", bad[i]);
        }
    }
    CHECK(wsp_parse_size(NULL, &n) != NULL);
    CHECK_INT(n, 42);   /* untouched on error */
    CHECK_STR(wsp_parse_size("-5M", &n), "negative");
}

static void test_size_overflow(apr_pool_t *p)
{
    apr_off_t n = 42;

    (void)p;
    CHECK(wsp_parse_size("9223372036854775807", &n) == NULL);
    CHECK_INT(n, APR_INT64_MAX);
    CHECK_STR(wsp_parse_size("9223372036854775808", &n), "too large");
    CHECK_STR(wsp_parse_size("99999999999999999999999", &n), "too large");
    CHECK(wsp_parse_size("8589934591G", &n) == NULL);  /* 2^63 - 2^30 */
    CHECK_STR(wsp_parse_size("8589934592G", &n), "too large");  /* 2^63 */
    CHECK_STR(wsp_parse_size("9007199254740992K", &n), "too large");
}

static void test_time(apr_pool_t *p)
{
    apr_interval_time_t t = -1;

    (void)p;
    CHECK(wsp_parse_time("10", &t) == NULL);
    CHECK_INT(t, 10 * APR_USEC_PER_SEC);
    CHECK(wsp_parse_time("0", &t) == NULL);
    CHECK_INT(t, 0);
    CHECK(wsp_parse_time("2s", &t) == NULL);
    CHECK_INT(t, 2 * APR_USEC_PER_SEC);
    CHECK(wsp_parse_time("250ms", &t) == NULL);
    CHECK_INT(t, 250000);
    CHECK(wsp_parse_time("250MS", &t) == NULL);
    CHECK_INT(t, 250000);
    CHECK(wsp_parse_time("1m", &t) == NULL);
    CHECK_INT(t, 60 * APR_USEC_PER_SEC);
    CHECK(wsp_parse_time("3min", &t) == NULL);
    CHECK_INT(t, 180 * APR_USEC_PER_SEC);
    CHECK(wsp_parse_time("2h", &t) == NULL);
    CHECK_INT(t, 7200 * APR_USEC_PER_SEC);
}

static void test_time_bad(apr_pool_t *p)
{
    static const char *bad[] = {
        "", "-1", "-1s", "s", "ms", "10x", "10 s", " 10", "10ms ", "1.5s",
        "10sec", "10mss", "1d", "+1"
    };
    apr_interval_time_t t = 42;
    apr_size_t i;

    (void)p;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *err = wsp_parse_time(bad[i], &t);
        CHECK(err != NULL);
        if (!err) {
            fprintf(stderr, "  accepted time \"%s\"\n", bad[i]);
        }
    }
    CHECK(wsp_parse_time(NULL, &t) != NULL);
    CHECK_INT(t, 42);
    CHECK_STR(wsp_parse_time("-1s", &t), "negative");
}

static void test_time_overflow(apr_pool_t *p)
{
    apr_interval_time_t t = 42;

    (void)p;
    /* Microseconds in 64 bits: 2562047788 hours fit, one more does not. */
    CHECK(wsp_parse_time("2562047788h", &t) == NULL);
    CHECK_INT(t, 2562047788LL * 3600 * APR_USEC_PER_SEC);
    CHECK_STR(wsp_parse_time("2562047789h", &t), "too large");
    CHECK(wsp_parse_time("9223372036854", &t) == NULL);
    CHECK_STR(wsp_parse_time("9223372036855", &t), "too large");
    CHECK_STR(wsp_parse_time("99999999999999999999ms", &t), "too large");
    CHECK_INT(t, 9223372036854LL * APR_USEC_PER_SEC);
}

static void test_uuid(apr_pool_t *p)
{
    (void)p;
    CHECK(wsp_uuid_valid("098d8a97-3615-4eb8-b803-c57c01c7536c"));
    CHECK(wsp_uuid_valid("098D8A97-3615-4EB8-B803-C57C01C7536C"));
    CHECK(!wsp_uuid_valid(NULL));
    CHECK(!wsp_uuid_valid(""));
    CHECK(!wsp_uuid_valid("098d8a97-3615-4eb8-b803-c57c01c7536"));
    CHECK(!wsp_uuid_valid("098d8a97-3615-4eb8-b803-c57c01c7536c0"));
    CHECK(!wsp_uuid_valid("098d8a97-3615-4eb8-b803-c57c01c7536g"));
    CHECK(!wsp_uuid_valid("098d8a9703615-4eb8-b803-c57c01c7536c"));
    CHECK(!wsp_uuid_valid("098d8a97-3615-4eb8-b803c-57c01c7536c"));
    CHECK(!wsp_uuid_valid("098d8a973615-4eb8-b803-c57c01c7536c0"));
    CHECK(!wsp_uuid_valid("{98d8a97-3615-4eb8-b803-c57c01c7536c}"));
}

static void test_token(apr_pool_t *p)
{
    (void)p;
    CHECK(wsp_header_has_token("Upgrade", "upgrade"));
    CHECK(wsp_header_has_token("keep-alive, Upgrade", "upgrade"));
    CHECK(wsp_header_has_token("Upgrade,keep-alive", "upgrade"));
    CHECK(wsp_header_has_token(" \tkeep-alive ,\t UPGRADE \t", "upgrade"));
    CHECK(wsp_header_has_token("a,,b", "b"));
    CHECK(!wsp_header_has_token("upgrades", "upgrade"));
    CHECK(!wsp_header_has_token("keep-alive, xupgrade", "upgrade"));
    CHECK(!wsp_header_has_token("up grade", "upgrade"));
    CHECK(!wsp_header_has_token("upgrade; q=1", "upgrade"));
    CHECK(!wsp_header_has_token("", "upgrade"));
    CHECK(!wsp_header_has_token(NULL, "upgrade"));
    CHECK(!wsp_header_has_token("a, ,b", ""));
}

static void test_origin_check(apr_pool_t *p)
{
    static const char *good[] = {
        "*", "null", "https://app.example", "http://app.example:8080",
        "HTTPS://App.Example", "http://127.0.0.1", "http://[::1]:3000",
        "https://a-b.c.example:443",
    };
    static const char *bad[] = {
        "", "app.example", "ftp://app.example", "https://",
        "https://app.example/", "https://app.example/path",
        "https://app.example?x", "https://app.example:0",
        "https://app.example:65536", "https://app.example:",
        "https://user@app.example", "https://[::1", "https://app example",
        "https://app.example\r\nX: y", "**", "nulls",
    };
    apr_size_t i;

    (void)p;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK(wsp_origin_check(good[i]) == NULL);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(wsp_origin_check(bad[i]) != NULL);
        if (!wsp_origin_check(bad[i])) {
            fprintf(stderr, "  accepted origin \"%s\"\n", bad[i]);
        }
    }
}

static void test_origin_allowed(apr_pool_t *p)
{
    apr_array_header_t *list = apr_array_make(p, 2, sizeof(const char *));
    apr_array_header_t *any = apr_array_make(p, 1, sizeof(const char *));

    /* no list: anything; no Origin (not a browser): always */
    CHECK(wsp_origin_allowed(NULL, "https://evil.example"));
    CHECK(wsp_origin_allowed(NULL, NULL));
    APR_ARRAY_PUSH(list, const char *) = "https://app.example";
    APR_ARRAY_PUSH(list, const char *) = "http://localhost:3000";
    CHECK(wsp_origin_allowed(list, NULL));
    CHECK(wsp_origin_allowed(list, "https://app.example"));
    CHECK(wsp_origin_allowed(list, "HTTPS://APP.EXAMPLE"));
    CHECK(wsp_origin_allowed(list, "http://localhost:3000"));
    CHECK(!wsp_origin_allowed(list, "http://app.example"));
    CHECK(!wsp_origin_allowed(list, "https://app.example:8443"));
    CHECK(!wsp_origin_allowed(list, "https://app.example.evil.example"));
    CHECK(!wsp_origin_allowed(list, "https://evil.example"));
    CHECK(!wsp_origin_allowed(list, "null"));
    CHECK(!wsp_origin_allowed(list, ""));
    APR_ARRAY_PUSH(any, const char *) = "*";
    CHECK(wsp_origin_allowed(any, "https://evil.example"));
    CHECK(wsp_origin_allowed(any, "null"));
}

/* The resume count's query parameter is taken out of what backends see. */
static void test_query_take(apr_pool_t *p)
{
    const char *v;
    int n;

    CHECK_STR(wsp_query_take(p, "a=1&wsp_received=7&b=2", "wsp_received",
                             &n, &v), "a=1&b=2");
    CHECK_INT(n, 1);
    CHECK_STR(v, "7");
    CHECK(wsp_query_take(p, "wsp_received=3", "wsp_received", &n, &v)
          == NULL);
    CHECK_STR(v, "3");
    CHECK_STR(wsp_query_take(p, "wsp_received=3&x", "wsp_received", &n, &v),
              "x");
    CHECK_STR(wsp_query_take(p, "x&wsp_received=", "wsp_received", &n, &v),
              "x");
    CHECK_STR(v, "");
    /* a bare name, twice: both go, the first one's value is kept */
    CHECK(wsp_query_take(p, "wsp_received&wsp_received=9", "wsp_received",
                         &n, &v) == NULL);
    CHECK_INT(n, 2);
    CHECK_STR(v, "");
    /* a longer name that starts the same stays */
    CHECK_STR(wsp_query_take(p, "wsp_receivedx=1&id=u", "wsp_received", &n,
                             &v), "wsp_receivedx=1&id=u");
    CHECK_INT(n, 0);
    CHECK(v == NULL);
    /* empty parts are dropped, nothing else changes */
    CHECK_STR(wsp_query_take(p, "a=%20&&b", "wsp_received", &n, &v),
              "a=%20&b");
    CHECK(wsp_query_take(p, NULL, "wsp_received", &n, &v) == NULL);
    CHECK(wsp_query_take(p, "", "wsp_received", &n, &v) == NULL);
}

WSP_TEST_MAIN(
    RUN(test_query_take);
    RUN(test_size_plain);
    RUN(test_size_suffixes);
    RUN(test_size_bad);
    RUN(test_size_overflow);
    RUN(test_time);
    RUN(test_time_bad);
    RUN(test_time_overflow);
    RUN(test_uuid);
    RUN(test_token);
    RUN(test_origin_check);
    RUN(test_origin_allowed);
)
