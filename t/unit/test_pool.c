/* Backend URLs, selection, back-off and removal (wsp_pool.c). */

#include <apr_strings.h>
#include <apr_tables.h>

#include "wsp_test.h"
#include "wsp_pool.h"

#define MS(n)  ((apr_interval_time_t)(n) * 1000)
#define SEC(n) ((apr_interval_time_t)(n) * APR_USEC_PER_SEC)
#define T0     ((apr_time_t)SEC(1700000000))

static const wsp_pool_opts_t opts = { MS(100), SEC(1), 100, 0 };

/* A pool of n backends ws://10.0.0.1:9000/ ... ws://10.0.0.n:9000/ */
static wsp_pool_t *mkpool(apr_pool_t *p, int n)
{
    wsp_pool_t *pool = apr_pcalloc(p, sizeof(*pool));
    int i;

    pool->name = "/ws/";
    pool->backends = apr_array_make(p, n, sizeof(wsp_backend_t *));
    for (i = 0; i < n; ++i) {
        wsp_backend_t *be = apr_pcalloc(p, sizeof(*be));
        const char *url = apr_psprintf(p, "ws://10.0.0.%d:9000/", i + 1);
        if (wsp_backend_parse(p, url, be)) {
            fprintf(stderr, "mkpool: cannot parse %s\n", url);
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

/* Index of be in pool, -1 for NULL. */
static int idx(wsp_pool_t *pool, wsp_backend_t *be)
{
    int i;

    for (i = 0; i < pool->backends->nelts; ++i) {
        if (be_at(pool, i) == be) {
            return i;
        }
    }
    return -1;
}

static void test_parse_full(apr_pool_t *p)
{
    wsp_backend_t be;

    CHECK(wsp_backend_parse(p, "ws://10.0.0.11:9000/chat/", &be) == NULL);
    CHECK_STR(be.url, "ws://10.0.0.11:9000/chat/");
    CHECK_INT(be.tls, 0);
    CHECK_STR(be.host, "10.0.0.11");
    CHECK_INT(be.port, 9000);
    CHECK_STR(be.hostport, "10.0.0.11:9000");
    CHECK_STR(be.path, "/chat/");
    CHECK_INT(be.weight, 1);
    CHECK_INT(be.max_errors, 0);
    CHECK(be.addr == NULL);
    CHECK_INT(be.st->state, WSP_BE_OK);
    CHECK_INT(be.st->pipes, 0);
}

static void test_parse_default_ports(apr_pool_t *p)
{
    wsp_backend_t be;

    CHECK(wsp_backend_parse(p, "ws://example.com", &be) == NULL);
    CHECK_INT(be.port, 80);
    CHECK_STR(be.hostport, "example.com");
    CHECK_STR(be.path, "/");

    CHECK(wsp_backend_parse(p, "wss://example.com/x", &be) == NULL);
    CHECK_INT(be.tls, 1);
    CHECK_INT(be.port, 443);
    CHECK_STR(be.hostport, "example.com");
    CHECK_STR(be.path, "/x");
}

/* The Host header carries the port only when it is not the scheme's. */
static void test_parse_explicit_ports(apr_pool_t *p)
{
    wsp_backend_t be;

    CHECK(wsp_backend_parse(p, "ws://example.com:80/a", &be) == NULL);
    CHECK_STR(be.hostport, "example.com");
    CHECK(wsp_backend_parse(p, "wss://example.com:80/a", &be) == NULL);
    CHECK_STR(be.hostport, "example.com:80");
    CHECK(wsp_backend_parse(p, "ws://example.com:443", &be) == NULL);
    CHECK_STR(be.hostport, "example.com:443");
    CHECK(wsp_backend_parse(p, "ws://h:65535", &be) == NULL);
    CHECK_INT(be.port, 65535);
    CHECK(wsp_backend_parse(p, "ws://h:1/", &be) == NULL);
    CHECK_INT(be.port, 1);
}

static void test_parse_ipv6(apr_pool_t *p)
{
    wsp_backend_t be;

    CHECK(wsp_backend_parse(p, "ws://[::1]:8080/p", &be) == NULL);
    CHECK_STR(be.host, "::1");
    CHECK_INT(be.port, 8080);
    CHECK_STR(be.hostport, "[::1]:8080");
    CHECK_STR(be.path, "/p");

    CHECK(wsp_backend_parse(p, "wss://[2001:db8::1]", &be) == NULL);
    CHECK_STR(be.host, "2001:db8::1");
    CHECK_INT(be.port, 443);
    CHECK_STR(be.hostport, "[2001:db8::1]");
}

static void test_parse_bad(apr_pool_t *p)
{
    static const char *const bad[] = {
        "http://h/", "ftp://h", "wsx://h/", "ws:/h", "h:80",
        "ws://", "ws:///path", "ws://:80/",
        "ws://h:0/", "ws://h:65536/", "ws://h:99999999999/", "ws://h:8a/",
        "ws://h:18446744073709551696/",     /* 2^64 + 80 */
        "ws://h:/", "ws://h:-1/", "ws://h:80:81/",
        "ws://u:pw@h/", "ws://u@h:80/",
        "ws://h/p#frag", "ws://h#f", "ws://h/p?x=1", "ws://h?x",
        "ws://[::1/", "ws://[]/", "ws://[zz::1]/", "ws://[::1]x/",
        "ws://h/a b", "ws://h%41/",
    };
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        wsp_backend_t be;
        const char *err = wsp_backend_parse(p, bad[i], &be);
        /* rejected, and the text names the URL */
        if (!err || !strstr(err, bad[i])) {
            fprintf(stderr, "  %s: %s\n", bad[i], err ? err : "accepted");
        }
        CHECK(err != NULL && strstr(err, bad[i]) != NULL);
    }
}

/* A bad port is called a bad port, not a bad host. */
static void test_parse_port_message(apr_pool_t *p)
{
    static const char *const bad[] = {
        "ws://h:8a/", "ws://h:0", "ws://h:65536/x", "ws://[::1]:/",
    };
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        wsp_backend_t be;
        const char *err = wsp_backend_parse(p, bad[i], &be);
        CHECK(err && strstr(err, "port"));
    }
}

/* Credentials in a backend URL would be silently dropped: say why the
 * URL is refused. */
static void test_parse_userinfo(apr_pool_t *p)
{
    wsp_backend_t be;
    const char *err = wsp_backend_parse(p, "ws://u:pw@h/", &be);

    CHECK(err && strstr(err, "user info"));
    err = wsp_backend_parse(p, "ws://u@h/", &be);
    CHECK(err && strstr(err, "user info"));
}

/* A member of a name's line: its slot name is "URL (IP)"; parsed back,
 * it connects to the address while its Host stays the name. */
static void test_parse_member(apr_pool_t *p)
{
    wsp_backend_t be;
    const char *name = wsp_member_name(p, "ws://chat.internal:9000/chat/",
                                       "10.0.0.11");

    CHECK_STR(name, "ws://chat.internal:9000/chat/ (10.0.0.11)");
    CHECK(wsp_backend_parse_slot(p, name, &be) == NULL);
    CHECK_STR(be.url, name);
    CHECK_STR(be.st->url, name);
    CHECK_STR(be.ip, "10.0.0.11");
    CHECK_STR(be.host, "chat.internal");
    CHECK_STR(be.hostport, "chat.internal:9000");
    CHECK_STR(be.path, "/chat/");
    CHECK_INT(be.port, 9000);

    CHECK(wsp_backend_parse_slot(p, "ws://h:1/ (::1)", &be) == NULL);
    CHECK_STR(be.ip, "::1");
    CHECK(wsp_backend_parse_slot(p, "ws://h:1/", &be) == NULL);
    CHECK(be.ip == NULL);
    CHECK(wsp_backend_parse_slot(p, "ws://h:1/ 10.0.0.1", &be) != NULL);
    CHECK(wsp_backend_parse_slot(p, "ws://h:1/ ()", &be) != NULL);
    CHECK(wsp_backend_parse_slot(p, "ftp://h/ (10.0.0.1)", &be) != NULL);
    /* what the manager's form may add is a plain URL only */
    CHECK(wsp_backend_parse(p, name, &be) != NULL);
}

static void test_least_pipes(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 3);
    apr_time_t next_try = -1;

    be_at(pool, 0)->st->pipes = 2;
    be_at(pool, 1)->st->pipes = 0;
    be_at(pool, 2)->st->pipes = 1;
    CHECK_INT(idx(pool, wsp_pool_acquire(pool, &opts, T0, NULL, &next_try)), 1);
    CHECK_INT(be_at(pool, 1)->st->pipes, 1);

    be_at(pool, 1)->st->pipes = 3;
    CHECK_INT(idx(pool, wsp_pool_acquire(pool, &opts, T0, NULL, &next_try)), 2);
    CHECK_INT(be_at(pool, 2)->st->pipes, 2);
}

/* weight=3 against weight=1 takes 3 of every 4 new pipes, whichever
 * backend the rotation starts from. */
static void test_weights(apr_pool_t *p)
{
    unsigned int start;

    for (start = 0; start < 2; ++start) {
        wsp_pool_t *pool = mkpool(p, 2);
        apr_time_t next_try;
        int block, i, got[2];

        be_at(pool, 0)->st->weight = 3;
        pool->next = start;
        for (block = 0; block < 3; ++block) {
            got[0] = got[1] = 0;
            for (i = 0; i < 4; ++i) {
                int k = idx(pool, wsp_pool_acquire(pool, &opts, T0, NULL,
                                                   &next_try));
                CHECK(k >= 0);
                if (k >= 0) {
                    got[k]++;
                }
            }
            CHECK_INT(got[0], 3);
            CHECK_INT(got[1], 1);
        }
    }
}

static void test_tie_rotation(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 3);
    apr_time_t next_try;
    int i;

    for (i = 0; i < 6; ++i) {
        wsp_backend_t *be = wsp_pool_acquire(pool, &opts, T0, NULL, &next_try);
        CHECK_INT(idx(pool, be), i % 3);
        if (be) {
            wsp_pool_release(pool, be);
        }
    }
}

static void test_release_floor(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 1);
    apr_time_t next_try;
    wsp_backend_t *be = wsp_pool_acquire(pool, &opts, T0, NULL, &next_try);

    CHECK(be != NULL);
    CHECK_INT(be_at(pool, 0)->st->pipes, 1);
    wsp_pool_release(pool, be_at(pool, 0));
    CHECK_INT(be_at(pool, 0)->st->pipes, 0);
    wsp_pool_release(pool, be_at(pool, 0));
    CHECK_INT(be_at(pool, 0)->st->pipes, 0);
}

/* 100ms, 200ms, 400ms, 800ms, then the 1s cap. */
static void test_backoff_doubling(apr_pool_t *p)
{
    static const int delay_ms[] = { 100, 200, 400, 800, 1000, 1000 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);
    apr_time_t now = T0;
    int i;

    for (i = 0; i < 6; ++i) {
        now += SEC(5);
        wsp_pool_failed(pool, &opts, be, now);
        CHECK_INT(be->st->state, WSP_BE_ERROR);
        CHECK_INT(be->st->retry_delay, MS(delay_ms[i]));
        CHECK_INT(be->st->retry_at, now + MS(delay_ms[i]));
    }
    CHECK_INT(be->st->errors, 6);
    CHECK_INT(be->st->consecutive_errors, 6);
}

/* Many pipes seeing one outage: failures reported while the backend is
 * backing off count in errors only, so the delay does not jump to MAX and
 * the backend is not removed by one burst. */
static void test_burst_counts_once(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(30), 3, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);
    int i;

    for (i = 0; i < 500; i++) {
        wsp_pool_failed(pool, &o, be, T0 + i);
    }
    CHECK_INT(be->st->errors, 500);
    CHECK_INT(be->st->consecutive_errors, 1);
    CHECK_INT(be->st->retry_delay, MS(100));
    CHECK_INT(be->st->state, WSP_BE_ERROR);
    /* after the back-off a new failure is a new one */
    wsp_pool_failed(pool, &o, be, T0 + MS(100));
    CHECK_INT(be->st->consecutive_errors, 2);
    CHECK_INT(be->st->retry_delay, MS(200));
}

/* A MAX below MIN (not a valid config, but not a reason to misbehave)
 * holds the delay at MIN. */
static void test_backoff_max_below_min(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(500), MS(100), 100, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);

    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->retry_delay, MS(500));
    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->retry_delay, MS(500));
}

/* An errored backend is skipped until retry_at, even when lightly
 * loaded; from retry_at on it is usable and stays ERROR. */
static void test_retry_at_respected(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1);
    apr_time_t next_try;

    b->st->pipes = 5;
    wsp_pool_failed(pool, &opts, a, T0);
    CHECK(wsp_pool_acquire(pool, &opts, T0 + MS(99), NULL, &next_try) == b);
    CHECK(wsp_pool_acquire(pool, &opts, T0 + MS(100), NULL, &next_try) == a);
    CHECK_INT(a->st->state, WSP_BE_ERROR);
}

static void test_removal_pool_limit(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 3, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);
    apr_time_t next_try = -1;

    /* failures in a row: each after the back-off of the one before */
    wsp_pool_failed(pool, &o, be, T0);
    wsp_pool_failed(pool, &o, be, T0 + SEC(5));
    CHECK_INT(be->st->state, WSP_BE_ERROR);
    wsp_pool_failed(pool, &o, be, T0 + SEC(10));
    CHECK_INT(be->st->state, WSP_BE_REMOVED);
    /* removed is not usable, even long after its back-off, and it is not
     * something to wait for */
    CHECK(wsp_pool_acquire(pool, &o, T0 + SEC(3600), NULL, &next_try) == NULL);
    CHECK_INT(next_try, 0);
    CHECK(wsp_pool_acquire(pool, &o, T0, NULL, &next_try) == NULL);
    CHECK_INT(next_try, 0);
}

static void test_removal_backend_limit(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 2, 0 };
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *strict = be_at(pool, 0), *lenient = be_at(pool, 1);

    strict->st->max_errors = 1;
    lenient->st->max_errors = 5;
    wsp_pool_failed(pool, &o, strict, T0);
    CHECK_INT(strict->st->state, WSP_BE_REMOVED);
    wsp_pool_failed(pool, &o, lenient, T0);
    wsp_pool_failed(pool, &o, lenient, T0 + SEC(5));
    wsp_pool_failed(pool, &o, lenient, T0 + SEC(10));
    wsp_pool_failed(pool, &o, lenient, T0 + SEC(15));
    CHECK_INT(lenient->st->state, WSP_BE_ERROR);
    wsp_pool_failed(pool, &o, lenient, T0 + SEC(20));
    CHECK_INT(lenient->st->state, WSP_BE_REMOVED);
}

static void test_no_limit_no_removal(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 0, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);
    int i;

    for (i = 0; i < 1000; ++i) {
        wsp_pool_failed(pool, &o, be, T0 + SEC(5) * i);
    }
    CHECK_INT(be->st->consecutive_errors, 1000);
    CHECK_INT(be->st->state, WSP_BE_ERROR);
}

static void test_success_resets(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 3, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);

    wsp_pool_failed(pool, &o, be, T0);
    wsp_pool_failed(pool, &o, be, T0);
    wsp_pool_succeeded(pool, be);
    CHECK_INT(be->st->state, WSP_BE_OK);
    CHECK_INT(be->st->consecutive_errors, 0);
    CHECK_INT(be->st->retry_delay, 0);
    CHECK_INT(be->st->retry_at, 0);
    CHECK_INT(be->st->served, 1);
    CHECK_INT(be->st->errors, 2);
    /* back-off starts over at MIN, the count in a row from zero */
    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->retry_delay, MS(100));
    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->state, WSP_BE_ERROR);
}

/* Removal lasts until re-enabled: neither a handshake that completes
 * late nor another failure brings the backend back. */
static void test_removed_is_sticky(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 1, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *be = be_at(pool, 0);

    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->state, WSP_BE_REMOVED);
    wsp_pool_succeeded(pool, be);
    CHECK_INT(be->st->state, WSP_BE_REMOVED);
    CHECK_INT(be->st->served, 1);
    wsp_pool_failed(pool, &o, be, T0);
    CHECK_INT(be->st->state, WSP_BE_REMOVED);
}

static void test_exclusive(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 100, 1 };
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a, *b, *shared;
    apr_time_t next_try = -1;

    a = wsp_pool_acquire(pool, &o, T0, NULL, &next_try);
    b = wsp_pool_acquire(pool, &o, T0, NULL, &next_try);
    CHECK(a != NULL && b != NULL && a != b);
    CHECK(wsp_pool_acquire(pool, &o, T0, NULL, &next_try) == NULL);
    CHECK_INT(next_try, 0);
    /* the same pool shares busy backends when not exclusive */
    shared = wsp_pool_acquire(pool, &opts, T0, NULL, &next_try);
    CHECK(shared != NULL);
    if (shared) {
        wsp_pool_release(pool, shared);
    }

    wsp_pool_release(pool, a);
    CHECK(wsp_pool_acquire(pool, &o, T0, NULL, &next_try) == a);
}

static void test_next_try_all_backing_off(apr_pool_t *p)
{
    wsp_pool_opts_t o = { SEC(1), SEC(30), 100, 0 };
    wsp_pool_t *pool = mkpool(p, 3);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1);
    wsp_backend_t *c = be_at(pool, 2);
    apr_time_t next_try = -1;

    c->st->max_errors = 1;
    wsp_pool_failed(pool, &o, c, T0);               /* removed, T0+1s */
    wsp_pool_failed(pool, &o, b, T0 + MS(200));     /* T0+1.2s */
    wsp_pool_failed(pool, &o, b, T0 + MS(1300));    /* T0+3.3s */
    wsp_pool_failed(pool, &o, a, T0 + MS(500));     /* T0+1.5s */
    CHECK(wsp_pool_acquire(pool, &o, T0 + MS(1400), NULL, &next_try) == NULL);
    CHECK_INT(next_try, T0 + MS(1500));
}

/* Exclusive with one backend busy and one backing off: the back-off is
 * the one thing worth waiting for. */
static void test_next_try_exclusive_mixed(apr_pool_t *p)
{
    wsp_pool_opts_t o = { SEC(1), SEC(30), 100, 1 };
    wsp_pool_t *pool = mkpool(p, 2);
    apr_time_t next_try = -1;

    be_at(pool, 0)->st->pipes = 1;
    wsp_pool_failed(pool, &o, be_at(pool, 1), T0);
    CHECK(wsp_pool_acquire(pool, &o, T0, NULL, &next_try) == NULL);
    CHECK_INT(next_try, T0 + SEC(1));
}

static void test_retry_after(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1);

    CHECK_INT(wsp_pool_retry_after(pool, T0), 1);      /* none backs off */
    a->st->state = b->st->state = WSP_BE_ERROR;
    a->st->retry_at = T0 + MS(1200);
    b->st->retry_at = T0 + SEC(5);
    CHECK_INT(wsp_pool_retry_after(pool, T0), 2);
    a->st->retry_at = T0 + SEC(1);
    CHECK_INT(wsp_pool_retry_after(pool, T0), 1);
    a->st->retry_at = T0 + SEC(2) + 1;
    CHECK_INT(wsp_pool_retry_after(pool, T0), 3);
    a->st->retry_at = T0 + 1;
    CHECK_INT(wsp_pool_retry_after(pool, T0), 1);
    /* a removed backend's back-off is not a promise */
    a->st->state = WSP_BE_REMOVED;
    CHECK_INT(wsp_pool_retry_after(pool, T0), 5);
}

/* The shared-memory hooks: every call unlocks what it locked, and a
 * selection re-reads the pool's backends first. */
static int lock_depth, lock_max, syncs, frees;
static void t_lock(void) { if (++lock_depth > lock_max) lock_max = lock_depth; }
static void t_unlock(void) { lock_depth--; }
static void t_sync(wsp_pool_t *pool) { (void)pool; syncs++; }
static void t_free(wsp_backend_t *be) { (void)be; frees++; }

static void test_with_lock(apr_pool_t *p)
{
    static const wsp_pool_hooks_t hooks = { t_lock, t_unlock, t_sync,
                                            t_free };
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *be;
    apr_time_t next_try;

    wsp_pool_set_hooks(&hooks);
    be = wsp_pool_acquire(pool, &opts, T0, NULL, &next_try);
    CHECK(be != NULL);
    CHECK_INT(syncs, 1);
    wsp_pool_failed(pool, &opts, be, T0);
    wsp_pool_release(pool, be);
    wsp_pool_succeeded(pool, be);
    wsp_pool_failover(be);
    CHECK_INT(wsp_pool_retry_after(pool, T0), 1);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) != NULL);
    CHECK_INT(lock_depth, 0);
    CHECK_INT(lock_max, 1);
    CHECK_INT(frees, 0);
    wsp_pool_set_hooks(NULL);
}

/* drain: no new pipes; drained when its last pipe leaves. */
static void test_drain(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1), *got;
    apr_time_t next_try;

    got = wsp_pool_acquire(pool, &opts, T0, NULL, &next_try);
    CHECK(got == a);
    wsp_pool_drain(a->st, 0);
    CHECK_STR(wsp_backend_state_name(a->st), "draining");
    CHECK(wsp_pool_leaving(a));
    CHECK(!wsp_pool_leaving(b));
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == b);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == b);
    wsp_pool_release(pool, a);
    CHECK_STR(wsp_backend_state_name(a->st), "drained");
    CHECK(wsp_pool_leaving(a));
    wsp_pool_enable(a->st);
    CHECK_STR(wsp_backend_state_name(a->st), "ok");
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
}

/* A drain with no pipe is drained at once. */
static void test_drain_idle(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 1);

    wsp_pool_drain(be_at(pool, 0)->st, 0);
    CHECK_STR(wsp_backend_state_name(be_at(pool, 0)->st), "drained");
}

/* remove: drain, then the slot is freed with the last pipe. */
static void test_remove_frees_slot(apr_pool_t *p)
{
    static const wsp_pool_hooks_t hooks = { NULL, NULL, NULL, t_free };
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0);
    apr_time_t next_try;

    frees = 0;
    wsp_pool_set_hooks(&hooks);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) != a);
    wsp_pool_drain(a->st, 1);
    CHECK(wsp_pool_leaving(a));
    CHECK_INT(frees, 0);
    wsp_pool_release(pool, a);
    CHECK_INT(frees, 1);
    wsp_pool_set_hooks(NULL);
}

/* disable: no new pipes, but its pipes stay (not leaving). */
static void test_disable(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1);
    apr_time_t next_try = 0;
    int i;

    wsp_pool_disable(a->st);
    CHECK_STR(wsp_backend_state_name(a->st), "disabled");
    CHECK(!wsp_pool_leaving(a));
    for (i = 0; i < 4; ++i) {
        CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == b);
    }
    wsp_pool_disable(b->st);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == NULL);
    CHECK_INT(next_try, 0);
    wsp_pool_enable(a->st);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
}

/* enable brings back a backend removed after max_errors, its count of
 * failures started over. */
static void test_enable_removed(apr_pool_t *p)
{
    wsp_pool_opts_t o = { MS(100), SEC(1), 1, 0 };
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *a = be_at(pool, 0);
    apr_time_t next_try;

    wsp_pool_failed(pool, &o, a, T0);
    CHECK_STR(wsp_backend_state_name(a->st), "removed");
    CHECK(wsp_pool_acquire(pool, &o, T0 + SEC(10), NULL, &next_try) == NULL);
    wsp_pool_enable(a->st);
    CHECK_INT(a->st->consecutive_errors, 0);
    CHECK(wsp_pool_acquire(pool, &o, T0, NULL, &next_try) == a);
}

/* avoid: a pipe moving off its backend never picks the same one. */
static void test_avoid(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 2);
    wsp_backend_t *a = be_at(pool, 0), *b = be_at(pool, 1);
    apr_time_t next_try;
    int i;

    a->st->pipes = 0;
    b->st->pipes = 9;
    for (i = 0; i < 3; ++i) {
        CHECK(wsp_pool_acquire(pool, &opts, T0, a, &next_try) == b);
    }
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
}

/* the per-process count follows the shared one */
static void test_mine(apr_pool_t *p)
{
    wsp_pool_t *pool = mkpool(p, 1);
    wsp_backend_t *a = be_at(pool, 0);
    apr_uint32_t mine = 0;
    apr_time_t next_try;

    a->mine = &mine;
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
    CHECK(wsp_pool_acquire(pool, &opts, T0, NULL, &next_try) == a);
    CHECK_INT(mine, 2);
    CHECK_INT(a->st->pipes, 2);
    wsp_pool_release(pool, a);
    CHECK_INT(mine, 1);
    CHECK_INT(a->st->pipes, 1);
}

WSP_TEST_MAIN(
    RUN(test_parse_full);
    RUN(test_parse_default_ports);
    RUN(test_parse_explicit_ports);
    RUN(test_parse_ipv6);
    RUN(test_parse_bad);
    RUN(test_parse_port_message);
    RUN(test_parse_userinfo);
    RUN(test_parse_member);
    RUN(test_least_pipes);
    RUN(test_weights);
    RUN(test_tie_rotation);
    RUN(test_release_floor);
    RUN(test_backoff_doubling);
    RUN(test_backoff_max_below_min);
    RUN(test_burst_counts_once);
    RUN(test_retry_at_respected);
    RUN(test_removal_pool_limit);
    RUN(test_removal_backend_limit);
    RUN(test_no_limit_no_removal);
    RUN(test_success_resets);
    RUN(test_removed_is_sticky);
    RUN(test_exclusive);
    RUN(test_next_try_all_backing_off);
    RUN(test_next_try_exclusive_mixed);
    RUN(test_retry_after);
    RUN(test_with_lock);
    RUN(test_drain);
    RUN(test_drain_idle);
    RUN(test_remove_frees_slot);
    RUN(test_disable);
    RUN(test_enable_removed);
    RUN(test_avoid);
    RUN(test_mine);
)
