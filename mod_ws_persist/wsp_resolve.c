/* The resolver of backend host names; see include/wsp_resolve.h.
 *
 * One thread per child does every lookup, one at a time, with no lock
 * held. What it finds for a name lives in a pool of the thread's own,
 * swapped in under a mutex; a connect copies the addresses under that
 * mutex, which is never held across I/O (a lookup, a log line). Names are
 * never forgotten: a child knows few, and its backend views live as long.
 * The resolver's memory is not the child's pool: its thread may still be
 * inside getaddrinfo() when the child exits. */
#include <arpa/inet.h>

#include "apr_hash.h"
#include "apr_strings.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "apr_thread_proc.h"
#include "httpd.h"
#include "http_log.h"

#include "mod_ws_persist.h"
#include "wsp_config.h"
#include "wsp_resolve.h"
#include "wsp_shared.h"

/* A name that does not resolve is looked up again this soon; a failed
 * connect cannot ask for lookups of a name more often than EARLY. */
#define WSP_RESOLVE_RETRY apr_time_from_sec(5)
#define WSP_RESOLVE_EARLY apr_time_from_sec(1)

apr_interval_time_t wsp_resolve_interval = WSP_RESOLVE_DEFAULT_INTERVAL;

typedef struct wsp_name_t wsp_name_t;

struct wsp_name_t {
    wsp_name_t *next;
    const char *host;
    int numeric;                 /* parsed once, never looked up */
    int tried;                   /* a lookup has ended */
    apr_sockaddr_t *addr;        /* the last found; NULL: none yet */
    apr_pool_t *apool;           /* holds addr; the thread's */
    apr_status_t err;            /* of the last lookup */
    apr_time_t due;              /* of the next lookup */
    apr_time_t began;            /* the last lookup */
    apr_interval_time_t interval; /* the shortest resolve= of its lines,
                                  * 0: WSPersistResolveInterval */
    int members;                 /* lines make its addresses members */
};

typedef struct {
    apr_pool_t *pool;            /* the names; used under the mutex */
    apr_pool_t *tpool;           /* the thread's: address pools */
    apr_thread_mutex_t *mutex;
    apr_thread_cond_t *cond;
    apr_hash_t *names;
    wsp_name_t *first;
    server_rec *s;
    apr_interval_time_t interval;
    int stop;
} wsp_resolver_t;

static wsp_resolver_t *wsp_rs;

static int wsp_numeric_family(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    if (inet_pton(AF_INET, host, buf) == 1) {
        return APR_INET;
    }
#if APR_HAVE_IPV6
    if (inet_pton(AF_INET6, host, buf) == 1) {
        return APR_INET6;
    }
#endif
    return APR_UNSPEC;
}

int wsp_resolve_numeric(const char *host)
{
    return wsp_numeric_family(host) != APR_UNSPEC;
}

/* getaddrinfo() given a numeric host and its family does no I/O. */
apr_status_t wsp_resolve_numeric_addr(apr_sockaddr_t **out, const char *ip,
                                      apr_port_t port, apr_pool_t *p)
{
    int family = wsp_numeric_family(ip);

    *out = NULL;
    if (family == APR_UNSPEC) {
        return APR_EINVAL;
    }
    return apr_sockaddr_info_get(out, ip, family, port, 0, p);
}

/* host's entry, made if new; with the mutex held. A numeric host is
 * parsed here: getaddrinfo() given a numeric host and its family looks
 * nothing up and does no I/O. A name is due at once. */
static wsp_name_t *wsp_name_get(wsp_resolver_t *rs, const char *host)
{
    wsp_name_t *n = apr_hash_get(rs->names, host, APR_HASH_KEY_STRING);
    int family;

    if (n) {
        return n;
    }
    n = apr_pcalloc(rs->pool, sizeof(*n));
    n->host = apr_pstrdup(rs->pool, host);
    family = wsp_numeric_family(host);
    if (family != APR_UNSPEC) {
        n->numeric = 1;
        n->tried = 1;
        n->err = apr_sockaddr_info_get(&n->addr, n->host, family, 0, 0,
                                       rs->pool);
        if (n->err != APR_SUCCESS) {
            n->addr = NULL;
        }
    }
    else {
        apr_thread_cond_signal(rs->cond);
    }
    n->next = rs->first;
    rs->first = n;
    apr_hash_set(rs->names, n->host, APR_HASH_KEY_STRING, n);
    return n;
}

/* ---- the resolver thread ----------------------------------------------- */

static int wsp_addrs_within(const apr_sockaddr_t *a, const apr_sockaddr_t *b)
{
    const apr_sockaddr_t *x, *y;

    for (x = a; x; x = x->next) {
        for (y = b; y && !apr_sockaddr_equal(x, y); y = y->next)
            ;
        if (!y) {
            return 0;
        }
    }
    return 1;
}

/* Compared as sets: round-robin DNS reorders the answer every time. */
static int wsp_addrs_same(const apr_sockaddr_t *a, const apr_sockaddr_t *b)
{
    return wsp_addrs_within(a, b) && wsp_addrs_within(b, a);
}

/* The log names this many addresses of an answer: one may hold
 * thousands (a name line's members, a hostile name server). */
#define WSP_ADDRS_SHOWN 16

static const char *wsp_addrs_text(apr_pool_t *p, apr_sockaddr_t *sa)
{
    const char *out = NULL;
    char ip[64];
    int n = 0;

    for (; sa; sa = sa->next) {
        if (++n > WSP_ADDRS_SHOWN) {
            continue;
        }
        apr_sockaddr_ip_getbuf(ip, sizeof(ip), sa);
        out = out ? apr_pstrcat(p, out, " ", ip, NULL) : apr_pstrdup(p, ip);
    }
    if (n > WSP_ADDRS_SHOWN) {
        out = apr_psprintf(p, "%s ... (%d addresses)", out, n);
    }
    return out ? out : "nothing";
}

/* Look n up (no lock held), keep what was found, and say what changed.
 * Only this thread writes a name's addresses, so it reads them unlocked. */
static void wsp_lookup(wsp_resolver_t *rs, wsp_name_t *n, apr_time_t began)
{
    apr_pool_t *ap, *drop;
    apr_sockaddr_t *sa = NULL, *old = n->addr;
    apr_status_t rv, was = n->err;
    int changed;

    if (apr_pool_create(&ap, rs->tpool) != APR_SUCCESS) {
        return;
    }
    rv = apr_sockaddr_info_get(&sa, n->host, APR_UNSPEC, 0, 0, ap);
    ap_log_error(APLOG_MARK, APLOG_DEBUG, rv, rs->s, "ws_persist: looked "
                 "up backend host %s in %" APR_TIME_T_FMT " ms: %s",
                 n->host, apr_time_as_msec(apr_time_now() - began),
                 rv == APR_SUCCESS ? wsp_addrs_text(ap, sa) : "failed");
    changed = rv == APR_SUCCESS && !(old && wsp_addrs_same(sa, old));
    if (changed) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, rs->s, "ws_persist: backend "
                     "host %s is %s%s%s", n->host, wsp_addrs_text(ap, sa),
                     old ? ", was " : "",
                     old ? wsp_addrs_text(ap, old) : "");
    }
    else if (rv == APR_SUCCESS && was != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, rs->s, "ws_persist: backend "
                     "host %s resolves again", n->host);
    }
    else if (rv != APR_SUCCESS && rv != was) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, rv, rs->s, "ws_persist: "
                     "cannot resolve backend host %s%s%s", n->host,
                     old ? "; connects keep using " : "",
                     old ? wsp_addrs_text(ap, old) : "");
    }
    if (changed && n->members) {
        /* no resolver lock held: this takes the pool lock */
        wsp_shared_members(rs->s, n->host, sa, ap);
    }
    drop = ap;
    apr_thread_mutex_lock(rs->mutex);
    n->tried = 1;
    n->err = rv;
    if (changed) {
        drop = n->apool;
        n->apool = ap;
        n->addr = sa;
    }
    else if (rv != APR_SUCCESS && n->due > began + WSP_RESOLVE_RETRY) {
        n->due = began + WSP_RESOLVE_RETRY;
    }
    apr_thread_mutex_unlock(rs->mutex);
    if (drop) {
        apr_pool_destroy(drop);
    }
}

/* The name due first; with the mutex held. */
static wsp_name_t *wsp_name_next(wsp_resolver_t *rs)
{
    wsp_name_t *n, *best = NULL;

    for (n = rs->first; n; n = n->next) {
        if (!n->numeric && (!best || n->due < best->due)) {
            best = n;
        }
    }
    return best;
}

static void *APR_THREAD_FUNC wsp_resolver_main(apr_thread_t *t, void *data)
{
    wsp_resolver_t *rs = data;

    (void)t;
    apr_thread_mutex_lock(rs->mutex);
    while (!rs->stop) {
        wsp_name_t *n = wsp_name_next(rs);
        apr_time_t now = apr_time_now();

        if (!n) {
            apr_thread_cond_wait(rs->cond, rs->mutex);
            continue;
        }
        if (n->due > now) {
            apr_thread_cond_timedwait(rs->cond, rs->mutex, n->due - now);
            continue;
        }
        n->began = now;
        n->due = now + (n->interval ? n->interval : rs->interval);
        apr_thread_mutex_unlock(rs->mutex);
        wsp_lookup(rs, n, now);
        apr_thread_mutex_lock(rs->mutex);
    }
    apr_thread_mutex_unlock(rs->mutex);
    return NULL;
}

/* ---- what connects use ------------------------------------------------- */

static void wsp_addr_set_port(apr_sockaddr_t *sa, apr_port_t port)
{
    sa->port = port;
    if (sa->family == APR_INET) {
        sa->sa.sin.sin_port = htons(port);
    }
#if APR_HAVE_IPV6
    else if (sa->family == APR_INET6) {
        sa->sa.sin6.sin6_port = htons(port);
    }
#endif
}

apr_status_t wsp_resolve_addr(apr_sockaddr_t **out, const char *host,
                              apr_port_t port, apr_pool_t *p)
{
    wsp_resolver_t *rs = wsp_rs;
    wsp_name_t *n;
    apr_sockaddr_t *sa;
    apr_status_t rv;

    *out = NULL;
    if (!rs) {
        return APR_EINIT;
    }
    apr_thread_mutex_lock(rs->mutex);
    n = wsp_name_get(rs, host);
    if (n->addr) {
        rv = apr_sockaddr_info_copy(out, n->addr, p);
    }
    else {
        rv = n->tried && n->err ? n->err : WSP_RESOLVE_PENDING;
    }
    apr_thread_mutex_unlock(rs->mutex);
    for (sa = *out; rv == APR_SUCCESS && sa; sa = sa->next) {
        wsp_addr_set_port(sa, port);
    }
    return rv;
}

int wsp_resolve_ready(const char *host)
{
    wsp_resolver_t *rs = wsp_rs;
    int ready;

    if (!rs) {
        return 1;
    }
    apr_thread_mutex_lock(rs->mutex);
    ready = wsp_name_get(rs, host)->tried;
    apr_thread_mutex_unlock(rs->mutex);
    return ready;
}

void wsp_resolve_stale(const char *host)
{
    wsp_resolver_t *rs = wsp_rs;
    wsp_name_t *n;

    if (!rs) {
        return;
    }
    apr_thread_mutex_lock(rs->mutex);
    n = apr_hash_get(rs->names, host, APR_HASH_KEY_STRING);
    if (n && !n->numeric) {
        apr_time_t soon = n->began + WSP_RESOLVE_EARLY;

        if (soon < n->due) {
            n->due = soon;
            apr_thread_cond_signal(rs->cond);
        }
    }
    apr_thread_mutex_unlock(rs->mutex);
}

/* ---- child_init -------------------------------------------------------- */

/* A member connects to its own address: nothing to wait for. */
static int wsp_resolve_be_ready(const wsp_backend_t *be)
{
    return be->ip || wsp_resolve_ready(be->host);
}

/* The hosts of the configuration, and of backends the manager added
 * before this child started, are looked up before any pipe asks. */
static void wsp_learn_all(wsp_resolver_t *rs, apr_pool_t *ptemp)
{
    apr_array_header_t *pools = wsp_conf_pools(), *snap;
    int i, j;

    for (i = 0; pools && i < pools->nelts; ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(pools, i, wsp_pool_t *);

        for (j = 0; j < pool->backends->nelts; ++j) {
            wsp_name_get(rs, APR_ARRAY_IDX(pool->backends, j,
                                           wsp_backend_t *)->host);
        }
        for (j = 0; pool->names && j < pool->names->nelts; ++j) {
            wsp_backend_t *be = APR_ARRAY_IDX(pool->names, j,
                                              wsp_backend_t *);
            wsp_name_t *n = wsp_name_get(rs, be->host);

            n->members = 1;
            if (be->resolve && (!n->interval || be->resolve < n->interval)) {
                n->interval = be->resolve;
            }
        }
    }
    snap = wsp_shared_snapshot(ptemp);
    for (i = 0; snap && i < snap->nelts; ++i) {
        apr_array_header_t *bes = APR_ARRAY_IDX(snap, i,
                                                wsp_pool_info_t).backends;

        for (j = 0; j < bes->nelts; ++j) {
            const char *url = APR_ARRAY_IDX(bes, j, wsp_be_info_t).url;
            wsp_backend_t be;

            /* a member connects to its address: nothing to learn */
            if (!wsp_backend_parse_slot(ptemp, url, &be) && !be.ip) {
                wsp_name_get(rs, be.host);
            }
        }
    }
}

static apr_status_t wsp_resolve_stop(void *data)
{
    wsp_resolver_t *rs = data;

    apr_thread_mutex_lock(rs->mutex);
    rs->stop = 1;
    apr_thread_cond_signal(rs->cond);
    apr_thread_mutex_unlock(rs->mutex);
    return APR_SUCCESS;
}

static apr_status_t wsp_unmanaged_pool(apr_pool_t **p)
{
    apr_allocator_t *alloc;
    apr_status_t rv;

    if ((rv = apr_allocator_create(&alloc)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_pool_create_unmanaged_ex(p, NULL, alloc)) != APR_SUCCESS) {
        apr_allocator_destroy(alloc);
        return rv;
    }
    apr_allocator_owner_set(alloc, *p);
    return APR_SUCCESS;
}

apr_status_t wsp_resolve_child_init(apr_pool_t *pchild, server_rec *s)
{
    wsp_resolver_t *rs;
    apr_pool_t *pool, *ptemp;
    apr_threadattr_t *attr;
    apr_thread_t *thread;
    apr_status_t rv;

    if (!wsp_conf_pools()) {
        return APR_SUCCESS;         /* no backend anywhere */
    }
    if ((rv = wsp_unmanaged_pool(&pool)) != APR_SUCCESS) {
        return rv;
    }
    rs = apr_pcalloc(pool, sizeof(*rs));
    rs->pool = pool;
    rs->s = s;
    rs->interval = wsp_resolve_interval;
    rs->names = apr_hash_make(pool);
    if ((rv = wsp_unmanaged_pool(&rs->tpool)) != APR_SUCCESS
        || (rv = apr_thread_mutex_create(&rs->mutex,
                                         APR_THREAD_MUTEX_DEFAULT, pool))
           != APR_SUCCESS
        || (rv = apr_thread_cond_create(&rs->cond, pool)) != APR_SUCCESS
        || (rv = apr_pool_create(&ptemp, pchild)) != APR_SUCCESS) {
        return rv;
    }
    wsp_learn_all(rs, ptemp);
    apr_pool_destroy(ptemp);
    /* numeric hosts work without the thread */
    wsp_rs = rs;
    wsp_pool_set_ready(wsp_resolve_be_ready);

    if ((rv = apr_threadattr_create(&attr, rs->tpool)) != APR_SUCCESS
        || (rv = apr_threadattr_detach_set(attr, 1)) != APR_SUCCESS
        || (rv = apr_thread_create(&thread, attr, wsp_resolver_main, rs,
                                   rs->tpool)) != APR_SUCCESS) {
        return rv;
    }
    apr_pool_cleanup_register(pchild, rs, wsp_resolve_stop,
                              apr_pool_cleanup_null);
    return APR_SUCCESS;
}
