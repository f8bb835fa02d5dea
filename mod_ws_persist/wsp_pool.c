/* Backend pools: URL parsing, selection by least pipes per weight,
 * back-off and removal. APR only; see include/wsp_pool.h. */

#include <apr_strings.h>
#include <apr_cstr.h>
#include <apr_lib.h>
#include <apr_thread_mutex.h>

#include "wsp_pool.h"

/* One lock for all pools of the process: pools are small and the
 * critical sections a few comparisons, so finer locks would buy nothing. */
#if APR_HAS_THREADS
static apr_thread_mutex_t *wsp_pool_mutex;
#endif

static void wsp_pool_lock(void)
{
#if APR_HAS_THREADS
    if (wsp_pool_mutex) {
        apr_thread_mutex_lock(wsp_pool_mutex);
    }
#endif
}

static void wsp_pool_unlock(void)
{
#if APR_HAS_THREADS
    if (wsp_pool_mutex) {
        apr_thread_mutex_unlock(wsp_pool_mutex);
    }
#endif
}

apr_status_t wsp_pool_child_init(apr_pool_t *p)
{
#if APR_HAS_THREADS
    return apr_thread_mutex_create(&wsp_pool_mutex,
                                   APR_THREAD_MUTEX_DEFAULT, p);
#else
    (void)p;
    return APR_SUCCESS;
#endif
}

static int wsp_host_char(char c)
{
    return apr_isalnum(c) || c == '-' || c == '.' || c == '_';
}

/* Host (brackets stripped for IPv6) from s; *end points past it. */
static const char *wsp_parse_host(apr_pool_t *p, const char *url,
                                  const char *s, const char **end,
                                  wsp_backend_t *be, int *ipv6)
{
    const char *e, *c;

    *ipv6 = (*s == '[');
    if (*ipv6) {
        e = strchr(++s, ']');
        if (!e) {
            return apr_psprintf(p, "backend URL '%s': unclosed '[' in "
                                "host", url);
        }
        *end = e + 1;
        if (e == s || !memchr(s, ':', (apr_size_t)(e - s))) {
            return apr_psprintf(p, "backend URL '%s': bad IPv6 address",
                                url);
        }
        for (c = s; c < e; ++c) {
            if (!apr_isxdigit(*c) && *c != ':' && *c != '.') {
                return apr_psprintf(p, "backend URL '%s': bad IPv6 "
                                    "address", url);
            }
        }
    }
    else {
        for (e = s; wsp_host_char(*e); ++e)
            ;
        *end = e;
        if (e == s) {
            return apr_psprintf(p, "backend URL '%s': empty host", url);
        }
    }
    be->host = apr_pstrmemdup(p, s, (apr_size_t)(e - s));
    return NULL;
}

/* ":port" or nothing; the result must be 1..65535. */
static const char *wsp_parse_port(apr_pool_t *p, const char *url,
                                  const char *s, const char **end,
                                  apr_port_t *port)
{
    long v = 0;
    const char *e;

    if (*s != ':') {
        *end = s;
        return NULL;
    }
    for (e = ++s; apr_isdigit(*e); ++e) {
        v = v * 10 + (*e - '0');
        if (v > 65535) {
            break;
        }
    }
    if (e == s || v < 1 || v > 65535 || (*e && *e != '/')) {
        return apr_psprintf(p, "backend URL '%s': bad port", url);
    }
    *port = (apr_port_t)v;
    *end = e;
    return NULL;
}

const char *wsp_backend_parse(apr_pool_t *p, const char *url,
                              wsp_backend_t *be)
{
    const char *s, *err;
    apr_port_t dport;
    int ipv6;

    memset(be, 0, sizeof(*be));
    for (s = url; *s; ++s) {
        /* the path goes into a request line as it is */
        if (apr_iscntrl(*s) || *s == ' ') {
            return apr_psprintf(p, "backend URL '%s': space or control "
                                "character", url);
        }
    }
    if (!apr_cstr_casecmpn(url, "ws://", 5)) {
        s = url + 5;
        dport = 80;
    }
    else if (!apr_cstr_casecmpn(url, "wss://", 6)) {
        s = url + 6;
        dport = 443;
        be->tls = 1;
    }
    else {
        return apr_psprintf(p, "backend URL '%s': scheme must be ws:// or "
                            "wss://", url);
    }
    if (strchr(url, '#')) {
        return apr_psprintf(p, "backend URL '%s': fragments are not "
                            "allowed", url);
    }
    if (strchr(url, '?')) {
        return apr_psprintf(p, "backend URL '%s': a query is not allowed "
                            "(the client's query is passed on)", url);
    }
    if (memchr(s, '@', strcspn(s, "/"))) {
        return apr_psprintf(p, "backend URL '%s': user info is not "
                            "allowed", url);
    }
    if ((err = wsp_parse_host(p, url, s, &s, be, &ipv6))) {
        return err;
    }
    be->port = dport;
    if ((err = wsp_parse_port(p, url, s, &s, &be->port))) {
        return err;
    }
    if (*s && *s != '/') {
        return apr_psprintf(p, "backend URL '%s': bad host", url);
    }

    be->url = apr_pstrdup(p, url);
    be->path = *s ? apr_pstrdup(p, s) : "/";
    be->hostport = apr_pstrcat(p, ipv6 ? "[" : "", be->host,
                               ipv6 ? "]" : "", NULL);
    if (be->port != dport) {
        be->hostport = apr_psprintf(p, "%s:%u", be->hostport,
                                    (unsigned int)be->port);
    }
    be->weight = 1;
    return NULL;
}

static int wsp_backing_off(const wsp_backend_t *be, apr_time_t now)
{
    return be->state != WSP_BE_REMOVED && be->retry_at > now;
}

/* Earliest retry_at of the backends backing off at now, 0 if none. */
static apr_time_t wsp_pool_next_retry(const wsp_pool_t *pool,
                                      apr_time_t now)
{
    apr_time_t next = 0;
    int i;

    for (i = 0; i < pool->backends->nelts; ++i) {
        const wsp_backend_t *be = APR_ARRAY_IDX(pool->backends, i,
                                                wsp_backend_t *);
        if (wsp_backing_off(be, now) && (!next || be->retry_at < next)) {
            next = be->retry_at;
        }
    }
    return next;
}

/* Whether a carries fewer pipes per weight than b. */
static int wsp_less_loaded(const wsp_backend_t *a, const wsp_backend_t *b)
{
    return (apr_int64_t)a->pipes * b->weight
           < (apr_int64_t)b->pipes * a->weight;
}

wsp_backend_t *wsp_pool_acquire(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                                apr_time_t now, apr_time_t *next_try)
{
    wsp_backend_t *best = NULL;
    unsigned int n, i, best_i = 0;

    wsp_pool_lock();
    n = (unsigned int)pool->backends->nelts;
    /* Scan from the rotating start: the first of equals wins, so ties
     * spread over the pool instead of piling onto backend 0. */
    for (i = 0; i < n; ++i) {
        unsigned int k = (pool->next + i) % n;
        wsp_backend_t *be = APR_ARRAY_IDX(pool->backends, k,
                                          wsp_backend_t *);
        if (be->state == WSP_BE_REMOVED || be->retry_at > now
            || (o->exclusive && be->pipes > 0)) {
            continue;
        }
        if (!best || wsp_less_loaded(be, best)) {
            best = be;
            best_i = k;
        }
    }
    if (best) {
        best->pipes++;
        pool->next = (best_i + 1) % n;
    }
    else {
        *next_try = wsp_pool_next_retry(pool, now);
    }
    wsp_pool_unlock();
    return best;
}

void wsp_pool_release(wsp_pool_t *pool, wsp_backend_t *be)
{
    (void)pool;
    wsp_pool_lock();
    if (be->pipes > 0) {
        be->pipes--;
    }
    wsp_pool_unlock();
}

void wsp_pool_failed(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                     wsp_backend_t *be, apr_time_t now)
{
    apr_interval_time_t cap;
    int limit;

    (void)pool;
    /* a MAX below MIN would stop the doubling before it starts */
    cap = o->retry_max > o->retry_min ? o->retry_max : o->retry_min;
    limit = be->max_errors ? be->max_errors : o->max_errors;

    wsp_pool_lock();
    be->errors++;
    if (be->state != WSP_BE_OK && now < be->retry_at) {
        /* one outage seen by many pipes at once is one failure: else a
         * busy backend would be backed off to MAX and removed at once */
        wsp_pool_unlock();
        return;
    }
    be->consecutive_errors++;
    if (!be->retry_delay) {
        be->retry_delay = o->retry_min;
    }
    else {
        be->retry_delay = be->retry_delay > cap / 2 ? cap
                                                    : be->retry_delay * 2;
    }
    be->retry_at = now + be->retry_delay;
    /* removal is sticky: a late failure must not revive a backend */
    if (be->state != WSP_BE_REMOVED) {
        be->state = (limit > 0 && be->consecutive_errors >= limit)
                    ? WSP_BE_REMOVED : WSP_BE_ERROR;
    }
    wsp_pool_unlock();
}

void wsp_pool_succeeded(wsp_pool_t *pool, wsp_backend_t *be)
{
    (void)pool;
    wsp_pool_lock();
    be->consecutive_errors = 0;
    be->retry_delay = 0;
    be->retry_at = 0;
    /* removed stays removed until re-enabled, even if a handshake that
     * began before the removal completes */
    if (be->state != WSP_BE_REMOVED) {
        be->state = WSP_BE_OK;
    }
    be->served++;
    wsp_pool_unlock();
}

int wsp_pool_retry_after(wsp_pool_t *pool, apr_time_t now)
{
    apr_time_t next;
    apr_interval_time_t wait;

    wsp_pool_lock();
    next = wsp_pool_next_retry(pool, now);
    wsp_pool_unlock();
    if (!next) {
        return 1;
    }
    wait = next - now;
    wait = (wait + APR_USEC_PER_SEC - 1) / APR_USEC_PER_SEC;
    return wait < 1 ? 1 : (wait > 86400 ? 86400 : (int)wait);
}
