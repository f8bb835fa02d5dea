/* Backend pools: URL parsing, selection by least pipes per weight,
 * back-off and removal. APR only; see include/wsp_pool.h. */

#include <apr_strings.h>
#include <apr_cstr.h>
#include <apr_lib.h>

#include "wsp_pool.h"
#include "wsp_hcheck.h"

/* Without hooks (unit tests) nothing is locked or shared. */
static wsp_pool_hooks_t wsp_hooks;
static int (*wsp_ready)(const wsp_backend_t *be);

void wsp_pool_set_hooks(const wsp_pool_hooks_t *hooks)
{
    if (hooks) {
        wsp_hooks = *hooks;
    }
    else {
        memset(&wsp_hooks, 0, sizeof(wsp_hooks));
    }
}

void wsp_pool_set_ready(int (*ready)(const wsp_backend_t *be))
{
    wsp_ready = ready;
}

static void wsp_pool_lock(void)
{
    if (wsp_hooks.lock) {
        wsp_hooks.lock();
    }
}

static void wsp_pool_unlock(void)
{
    if (wsp_hooks.unlock) {
        wsp_hooks.unlock();
    }
}

void wsp_backend_local_state(apr_pool_t *p, wsp_backend_t *be)
{
    be->st = apr_pcalloc(p, sizeof(*be->st));
    be->st->in_use = 1;
    be->st->weight = be->weight;
    be->st->max_errors = be->max_errors;
    apr_cpystrn(be->st->url, be->url ? be->url : "", WSP_URL_MAX);
    be->slot = -1;
    be->mine = NULL;
}

const char *wsp_backend_state_name(const wsp_be_shared_t *st)
{
    switch (st->admin) {
    case WSP_ADM_DRAINING:
        return "draining";
    case WSP_ADM_DRAINED:
        return "drained";
    case WSP_ADM_DISABLED:
        return "disabled";
    default:
        break;
    }
    switch (st->state) {
    case WSP_BE_ERROR:
        return "error";
    case WSP_BE_REMOVED:
        return "removed";
    default:
        /* a handshake begun before the check failed may have completed */
        return st->hc_down ? "error" : "ok";
    }
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
    wsp_backend_local_state(p, be);
    return NULL;
}

const char *wsp_member_name(apr_pool_t *p, const char *url, const char *ip)
{
    return apr_pstrcat(p, url, " (", ip, ")", NULL);
}

/* A member's name is its line's URL and its address: the URL cannot hold
 * a space, so the first one ends it. */
const char *wsp_backend_parse_slot(apr_pool_t *p, const char *name,
                                   wsp_backend_t *be)
{
    const char *sp = strchr(name, ' '), *err;
    apr_size_t len;

    if (!sp) {
        return wsp_backend_parse(p, name, be);
    }
    len = strlen(sp);
    if (len < 4 || sp[1] != '(' || sp[len - 1] != ')') {
        return apr_psprintf(p, "backend '%s': not a URL", name);
    }
    if ((err = wsp_backend_parse(p, apr_pstrmemdup(p, name,
                                                   (apr_size_t)(sp - name)),
                                 be))) {
        return err;
    }
    be->ip = apr_pstrmemdup(p, sp + 2, len - 3);
    be->url = apr_pstrdup(p, name);
    apr_cpystrn(be->st->url, be->url, WSP_URL_MAX);
    return NULL;
}

static int wsp_backing_off(const wsp_be_shared_t *st, apr_time_t now)
{
    return st->state != WSP_BE_REMOVED && st->retry_at > now;
}

/* Earliest retry_at of the backends backing off at now, 0 if none. */
static apr_time_t wsp_pool_next_retry(const wsp_pool_t *pool,
                                      apr_time_t now)
{
    apr_time_t next = 0;
    int i;

    for (i = 0; i < pool->backends->nelts; ++i) {
        const wsp_be_shared_t *st = APR_ARRAY_IDX(pool->backends, i,
                                                  wsp_backend_t *)->st;
        /* one down by its check comes back by a check, not by time */
        if (!st->admin && !st->hc_down && wsp_backing_off(st, now)
            && (!next || st->retry_at < next)) {
            next = st->retry_at;
        }
    }
    return next;
}

/* Whether a carries fewer pipes per weight than b. */
static int wsp_less_loaded(const wsp_backend_t *a, const wsp_backend_t *b)
{
    return (apr_int64_t)a->st->pipes * b->st->weight
           < (apr_int64_t)b->st->pipes * a->st->weight;
}

static void wsp_count_pipe(wsp_backend_t *be, int delta)
{
    if (delta < 0 && be->st->pipes <= 0) {
        return;
    }
    be->st->pipes += delta;
    if (be->mine) {
        *be->mine += delta;
    }
}

wsp_backend_t *wsp_pool_acquire(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                                apr_time_t now, const wsp_backend_t *avoid,
                                apr_time_t *next_try)
{
    wsp_backend_t *best = NULL;
    unsigned int n, i, best_i = 0;
    int waiting = 0;

    wsp_pool_lock();
    if (wsp_hooks.sync) {
        wsp_hooks.sync(pool);
    }
    n = (unsigned int)pool->backends->nelts;
    /* Scan from the rotating start: the first of equals wins, so ties
     * spread over the pool instead of piling onto backend 0. */
    for (i = 0; i < n; ++i) {
        unsigned int k = (pool->next + i) % n;
        wsp_backend_t *be = APR_ARRAY_IDX(pool->backends, k,
                                          wsp_backend_t *);
        const wsp_be_shared_t *st = be->st;

        if (be == avoid || st->admin || st->removing || st->retired
            || st->state == WSP_BE_REMOVED || st->retry_at > now
            || st->hc_down
            || (o->exclusive && st->pipes > 0)) {
            continue;
        }
        if (wsp_ready && !wsp_ready(be)) {
            waiting = 1;
            continue;
        }
        if (!best || wsp_less_loaded(be, best)) {
            best = be;
            best_i = k;
        }
    }
    if (best) {
        wsp_count_pipe(best, 1);
        pool->next = n ? (best_i + 1) % n : 0;
    }
    else {
        *next_try = waiting ? 0 : wsp_pool_next_retry(pool, now);
    }
    wsp_pool_unlock();
    return best;
}

void wsp_pool_release(wsp_pool_t *pool, wsp_backend_t *be)
{
    wsp_be_shared_t *st = be->st;

    (void)pool;
    wsp_pool_lock();
    wsp_count_pipe(be, -1);
    if (st->pipes == 0 && st->admin == WSP_ADM_DRAINING) {
        st->admin = WSP_ADM_DRAINED;
    }
    if (st->pipes == 0 && st->removing && wsp_hooks.free_slot) {
        wsp_hooks.free_slot(be);
    }
    wsp_pool_unlock();
}

void wsp_pool_failover(wsp_backend_t *be)
{
    wsp_pool_lock();
    be->st->failovers++;
    wsp_pool_unlock();
}

int wsp_pool_leaving(const wsp_backend_t *be)
{
    const wsp_be_shared_t *st = be->st;

    return st->admin == WSP_ADM_DRAINING || st->admin == WSP_ADM_DRAINED
           || st->removing;
}

void wsp_pool_drain(wsp_be_shared_t *st, int remove)
{
    st->admin = st->pipes > 0 ? WSP_ADM_DRAINING : WSP_ADM_DRAINED;
    if (remove) {
        st->removing = 1;
    }
}

void wsp_pool_disable(wsp_be_shared_t *st)
{
    st->admin = WSP_ADM_DISABLED;
}

void wsp_pool_enable(wsp_be_shared_t *st)
{
    st->admin = WSP_ADM_NONE;
    st->removing = 0;
    if (st->state == WSP_BE_REMOVED) {
        /* back in: its count of failures starts over */
        st->state = WSP_BE_OK;
        st->consecutive_errors = 0;
        st->retry_delay = 0;
        st->retry_at = 0;
    }
}

void wsp_pool_failed(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                     wsp_backend_t *be, apr_time_t now)
{
    wsp_be_shared_t *st = be->st;
    apr_interval_time_t cap;
    int limit;

    (void)pool;
    /* a MAX below MIN would stop the doubling before it starts */
    cap = o->retry_max > o->retry_min ? o->retry_max : o->retry_min;
    limit = st->max_errors ? st->max_errors : o->max_errors;

    wsp_pool_lock();
    st->errors++;
    if (st->state != WSP_BE_OK && now < st->retry_at) {
        /* one outage seen by many pipes at once is one failure: else a
         * busy backend would be backed off to MAX and removed at once */
        wsp_pool_unlock();
        return;
    }
    st->consecutive_errors++;
    if (!st->retry_delay) {
        st->retry_delay = o->retry_min;
    }
    else {
        st->retry_delay = st->retry_delay > cap / 2 ? cap
                                                    : st->retry_delay * 2;
    }
    st->retry_at = now + st->retry_delay;
    /* removal is sticky: a late failure must not revive a backend */
    if (st->state != WSP_BE_REMOVED) {
        st->state = (limit > 0 && st->consecutive_errors >= limit)
                    ? WSP_BE_REMOVED : WSP_BE_ERROR;
    }
    wsp_pool_unlock();
}

void wsp_pool_succeeded(wsp_pool_t *pool, wsp_backend_t *be)
{
    wsp_be_shared_t *st = be->st;

    (void)pool;
    wsp_pool_lock();
    st->consecutive_errors = 0;
    st->retry_delay = 0;
    st->retry_at = 0;
    /* removed stays removed until re-enabled, even if a handshake that
     * began before the removal completes */
    if (st->state != WSP_BE_REMOVED) {
        st->state = WSP_BE_OK;
    }
    st->served++;
    wsp_pool_unlock();
}

int wsp_pool_size(wsp_pool_t *pool)
{
    int n;

    wsp_pool_lock();
    if (wsp_hooks.sync) {
        wsp_hooks.sync(pool);
    }
    n = pool->backends->nelts;
    wsp_pool_unlock();
    return n;
}

apr_array_header_t *wsp_pool_backends(wsp_pool_t *pool, apr_pool_t *p)
{
    apr_array_header_t *out;

    wsp_pool_lock();
    if (wsp_hooks.sync) {
        wsp_hooks.sync(pool);
    }
    out = apr_array_copy(p, pool->backends);
    wsp_pool_unlock();
    return out;
}

int wsp_pool_checked(wsp_pool_t *pool, wsp_backend_t *be, int pass,
                     const char *why, apr_time_t now)
{
    wsp_be_shared_t *st = be->st;
    int change = WSP_HC_SAME;

    (void)pool;
    wsp_pool_lock();
    /* the slot may have been freed, or given to another backend, while
     * the check ran */
    if (st->in_use && !st->retired && !strcmp(st->url, be->url)) {
        change = wsp_hcheck_record(st, pool->hcheck, pass, why, now);
    }
    wsp_pool_unlock();
    return change;
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
