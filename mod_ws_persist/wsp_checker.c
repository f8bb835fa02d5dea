/* The health checker. One process of the server runs every pool's
 * WSPersistHealthCheck: a mod_watchdog singleton, whose thread in exactly
 * one child holds the watchdog's process mutex (another child's takes
 * over when that one exits), as mod_proxy_hcheck does for mod_proxy.
 *
 * Every AP_WD_TM_SLICE the callback starts the checks that are due, polls
 * those under way for at most a slice and moves them on, never blocking:
 * the connections are wsp_backend.c's non-blocking ones (addresses from
 * the resolver, TLS through mod_ssl for wss://). A check that is not over
 * at its timeout is cut. Results go into the shared backend state
 * (wsp_pool_checked), so every child's pools see them at once. */
#include "httpd.h"
#include "http_config.h"
#include "apr_atomic.h"
#include "apr_strings.h"
#include "http_log.h"
#include "http_core.h"
#include "mod_watchdog.h"

#include "mod_ws_persist.h"
#include "wsp_backend.h"
#include "wsp_checker.h"
#include "wsp_config.h"
#include "wsp_hcheck.h"
#include "wsp_resolve.h"

#define WSP_CHECKER_NAME "_ws_persist_hcheck_"
#define WSP_CHECKER_UA "mod_ws_persist health check"

/* One backend's checks. */
typedef struct {
    wsp_pool_t *pool;
    wsp_backend_t *be;          /* its view in the last round */
    apr_uint32_t round;         /* the last round that saw it */
    apr_time_t next_at;         /* when the next check is due */
    apr_time_t deadline;        /* of the check under way */
    wsp_bconn_t *bc;            /* the check under way, NULL: none */
} wsp_probe_t;

/* The checker thread's alone. */
static apr_pool_t *wsp_ck_pool;
static apr_array_header_t *wsp_probes;   /* of wsp_probe_t * */
static apr_array_header_t *wsp_spare;    /* of wsp_probe_t *: of backends
                                          * gone, for reuse (members come
                                          * and go with DNS answers) */
static apr_uint32_t wsp_ck_round;
static server_rec *wsp_ck_server;
static apr_uint32_t wsp_ck_ready;        /* the child's shared state is
                                          * attached */

static int wsp_checker_wanted(void)
{
    apr_array_header_t *pools = wsp_conf_pools();
    int i;

    for (i = 0; pools && i < pools->nelts; ++i) {
        if (APR_ARRAY_IDX(pools, i, wsp_pool_t *)->hcheck) {
            return 1;
        }
    }
    return 0;
}

int wsp_checker_check_config(server_rec *s)
{
    if (wsp_checker_wanted()
        && (!APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance)
            || !APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback))) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                     "ws_persist: WSPersistHealthCheck needs mod_watchdog "
                     "(LoadModule watchdog_module, unless it is built into "
                     "httpd)");
        return !OK;
    }
    return OK;
}

/* ---- one check ---------------------------------------------------------- */

static const char *wsp_probe_request(void *baton, apr_pool_t *p,
                                     const char *key)
{
    wsp_probe_t *pr = baton;
    const wsp_hcheck_t *hc = pr->pool->hcheck;
    wsp_backend_req_t req;

    switch (hc->kind) {
    case WSP_HC_WS:
        memset(&req, 0, sizeof(req));
        req.path = hc->path;
        req.host = pr->be->hostport;
        req.key = key;
        req.headers = apr_table_make(p, 1);
        apr_table_setn(req.headers, "User-Agent", WSP_CHECKER_UA);
        return wsp_handshake_request(p, &req);
    case WSP_HC_GET:
        return apr_pstrcat(p, "GET ", hc->path, " HTTP/1.1\r\nHost: ",
                           pr->be->hostport, "\r\nUser-Agent: "
                           WSP_CHECKER_UA "\r\nConnection: close\r\n\r\n",
                           NULL);
    default:
        return "";              /* the connect is the check */
    }
}

/* A GET check's answer: its status line, 2xx passes. */
static int wsp_probe_read_status(wsp_bconn_t *bc, const char **why)
{
    apr_status_t rv;
    int res, status = 0;

    for (;;) {
        rv = wsp_bconn_fill(bc);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            return WSP_HS_MORE;
        }
        if (APR_STATUS_IS_EOF(rv)) {
            *why = "connection closed before the status line";
            return WSP_HS_FAIL;
        }
        if (rv != APR_SUCCESS) {
            *why = wsp_bconn_errtext(bc->pool, "reading the answer", rv);
            return WSP_HS_FAIL;
        }
        res = wsp_hcheck_status((const char *)bc->ibuf, bc->ilen, &status,
                                why);
        if (res == WSP_HS_MORE) {
            continue;
        }
        if (res == WSP_HS_OK && (status < 200 || status > 299)) {
            *why = apr_psprintf(bc->pool, "status %d", status);
            return WSP_HS_FAIL;
        }
        return res;
    }
}

static int wsp_probe_step(wsp_probe_t *pr, const char **why)
{
    const wsp_hcheck_t *hc = pr->pool->hcheck;
    int res;

    if (hc->kind == WSP_HC_WS) {
        return wsp_bconn_handshake(pr->bc, why);
    }
    res = wsp_bconn_request(pr->bc, why);
    if (res != WSP_HS_OK || hc->kind == WSP_HC_TCP) {
        return res;
    }
    return wsp_probe_read_status(pr->bc, why);
}

static const char *wsp_probe_phase(const wsp_bconn_t *bc)
{
    switch (bc->state) {
    case WSP_BC_CONNECTING:
        return "connecting";
    case WSP_BC_TLS:
        return "in the TLS handshake";
    case WSP_BC_SENDING:
        return "sending the request";
    default:
        return "waiting for the answer";
    }
}

/* A ws check that got its 101 says goodbye: a masked close 1000 (an
 * all-zero key is valid for an empty-looking payload), if the socket
 * takes it at once. */
static void wsp_probe_goodbye(wsp_bconn_t *bc)
{
    static const char close_frame[] = { (char)0x88, (char)0x82, 0, 0, 0, 0,
                                        (char)0x03, (char)0xe8 };
    apr_size_t n = sizeof(close_frame);

    (void)wsp_bconn_send(bc, close_frame, &n);
}

static void wsp_probe_done(wsp_probe_t *pr, int pass, const char *why,
                           apr_time_t now, apr_pool_t *ptemp)
{
    const wsp_hcheck_t *hc = pr->pool->hcheck;
    const char *kind = wsp_hcheck_kind_name(hc->kind);
    int change;

    why = why ? apr_pstrdup(ptemp, why) : NULL;   /* bc's pool goes */
    if (pr->bc) {
        if (pass && hc->kind == WSP_HC_WS) {
            wsp_probe_goodbye(pr->bc);
        }
        wsp_bconn_close(pr->bc);
        pr->bc = NULL;
    }
    change = wsp_pool_checked(pr->pool, pr->be, pass, why, now);
    if (change == WSP_HC_DOWN) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, wsp_ck_server,
                     "ws_persist: health check (%s) of backend %s in pool "
                     "%s failed: %s; taken out until it passes", kind,
                     pr->be->url, pr->pool->name, why);
    }
    else if (change == WSP_HC_UP) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, wsp_ck_server,
                     "ws_persist: health check (%s) of backend %s in pool "
                     "%s passed: back in", kind, pr->be->url,
                     pr->pool->name);
    }
    else {
        /* every interval: below debug */
        ap_log_error(APLOG_MARK, APLOG_TRACE1, 0, wsp_ck_server,
                     "ws_persist: health check (%s) of backend %s in pool "
                     "%s %s%s%s", kind, pr->be->url, pr->pool->name,
                     pass ? "passed" : "failed", pass ? "" : ": ",
                     pass ? "" : why);
    }
}

static void wsp_probe_start(wsp_probe_t *pr, apr_time_t now,
                            apr_pool_t *ptemp)
{
    const wsp_hcheck_t *hc = pr->pool->hcheck;
    server_rec *s = hc->server ? hc->server : wsp_ck_server;
    apr_status_t rv;

    rv = wsp_bconn_open(&pr->bc, wsp_ck_pool, s, pr->be, wsp_probe_request,
                        pr, NULL, 0);
    if (rv == WSP_RESOLVE_PENDING) {
        pr->next_at = now + AP_WD_TM_SLICE;   /* no result: not looked up */
        return;
    }
    pr->next_at = now + hc->interval;
    if (rv != APR_SUCCESS) {
        wsp_probe_done(pr, 0, wsp_bconn_errtext(ptemp, "connect", rv), now,
                       ptemp);
        return;
    }
    pr->deadline = now + hc->timeout;
}

/* ---- rounds ------------------------------------------------------------- */

static wsp_probe_t *wsp_probe_of(wsp_pool_t *pool, wsp_backend_t *be,
                                 apr_time_t now)
{
    wsp_probe_t *pr;
    int i;

    for (i = 0; i < wsp_probes->nelts; ++i) {
        pr = APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *);
        if (pr->pool == pool && pr->be->slot == be->slot
            && !strcmp(pr->be->url, be->url)) {
            pr->be = be;
            return pr;
        }
    }
    if (wsp_spare->nelts > 0) {
        pr = *(wsp_probe_t **)apr_array_pop(wsp_spare);
        memset(pr, 0, sizeof(*pr));
    }
    else {
        pr = apr_pcalloc(wsp_ck_pool, sizeof(*pr));
    }
    pr->pool = pool;
    pr->be = be;
    pr->next_at = now;
    APR_ARRAY_PUSH(wsp_probes, wsp_probe_t *) = pr;
    return pr;
}

/* Start what is due; forget backends no pool has any more. */
static void wsp_checker_start_due(apr_time_t now, apr_pool_t *ptemp)
{
    apr_array_header_t *pools = wsp_conf_pools();
    int i, j;

    wsp_ck_round++;
    for (i = 0; pools && i < pools->nelts; ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(pools, i, wsp_pool_t *);
        apr_array_header_t *bes;

        if (!pool->hcheck) {
            continue;
        }
        bes = wsp_pool_backends(pool, ptemp);
        for (j = 0; j < bes->nelts; ++j) {
            wsp_probe_t *pr = wsp_probe_of(pool, APR_ARRAY_IDX(bes, j,
                                           wsp_backend_t *), now);

            pr->round = wsp_ck_round;
            if (!pr->bc && now >= pr->next_at) {
                wsp_probe_start(pr, now, ptemp);
            }
        }
    }
    for (i = 0; i < wsp_probes->nelts; ) {
        wsp_probe_t *pr = APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *);

        if (pr->round != wsp_ck_round && !pr->bc) {
            APR_ARRAY_PUSH(wsp_spare, wsp_probe_t *) = pr;
            APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *)
                = APR_ARRAY_IDX(wsp_probes, wsp_probes->nelts - 1,
                                wsp_probe_t *);
            wsp_probes->nelts--;
            continue;
        }
        ++i;
    }
}

/* Poll the checks under way for at most a slice, then move each on. */
static void wsp_checker_advance(apr_time_t now, apr_pool_t *ptemp)
{
    apr_pollfd_t *pfd = apr_pcalloc(ptemp, sizeof(*pfd)
                                    * (wsp_probes->nelts + 1));
    apr_interval_time_t timeout = AP_WD_TM_SLICE;
    apr_int32_t n = 0, nsig = 0;
    int i;

    for (i = 0; i < wsp_probes->nelts; ++i) {
        wsp_probe_t *pr = APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *);

        if (!pr->bc) {
            continue;
        }
        pfd[n].desc_type = APR_POLL_SOCKET;
        pfd[n].desc.s = pr->bc->sock;
        pfd[n].reqevents = wsp_bconn_handshake_events(pr->bc);
        pfd[n++].p = ptemp;
        if (pr->deadline - now < timeout) {
            timeout = pr->deadline > now ? pr->deadline - now : 0;
        }
    }
    if (!n) {
        return;
    }
    (void)apr_poll(pfd, n, &nsig, timeout);
    now = apr_time_now();
    for (i = 0; i < wsp_probes->nelts; ++i) {
        wsp_probe_t *pr = APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *);
        const char *why = NULL;
        int res;

        if (!pr->bc) {
            continue;
        }
        res = wsp_probe_step(pr, &why);
        if (res == WSP_HS_MORE && now >= pr->deadline) {
            why = apr_psprintf(ptemp, "no answer within %" APR_TIME_T_FMT
                               " ms (%s)",
                               apr_time_as_msec(pr->pool->hcheck->timeout),
                               wsp_probe_phase(pr->bc));
            res = WSP_HS_FAIL;
        }
        if (res == WSP_HS_MORE) {
            wsp_bconn_settle(pr->bc);   /* the thread's buffer is shared */
            continue;
        }
        wsp_probe_done(pr, res == WSP_HS_OK, why, now, ptemp);
    }
}

static void wsp_checker_stop(void)
{
    int i;

    for (i = 0; wsp_probes && i < wsp_probes->nelts; ++i) {
        wsp_probe_t *pr = APR_ARRAY_IDX(wsp_probes, i, wsp_probe_t *);

        if (pr->bc) {
            wsp_bconn_close(pr->bc);
            pr->bc = NULL;
        }
    }
    wsp_probes = NULL;
    wsp_spare = NULL;
    if (wsp_ck_pool) {
        apr_pool_destroy(wsp_ck_pool);
        wsp_ck_pool = NULL;
    }
}

static apr_status_t wsp_checker_callback(int state, void *data,
                                         apr_pool_t *ptemp)
{
    apr_allocator_t *alloc;
    apr_time_t now;

    (void)data;
    switch (state) {
    case AP_WATCHDOG_STATE_STARTING:
        /* its own allocator: the checker thread is alone in it */
        if (apr_allocator_create(&alloc) != APR_SUCCESS
            || apr_pool_create_unmanaged_ex(&wsp_ck_pool, NULL, alloc)
               != APR_SUCCESS) {
            return APR_ENOMEM;
        }
        apr_allocator_owner_set(alloc, wsp_ck_pool);
        wsp_probes = apr_array_make(wsp_ck_pool, 8, sizeof(wsp_probe_t *));
        wsp_spare = apr_array_make(wsp_ck_pool, 8, sizeof(wsp_probe_t *));
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, wsp_ck_server,
                     "ws_persist: health checks run in this child");
        break;
    case AP_WATCHDOG_STATE_RUNNING:
        if (!wsp_ck_pool || !apr_atomic_read32(&wsp_ck_ready)) {
            break;
        }
        now = apr_time_now();
        wsp_checker_start_due(now, ptemp);
        wsp_checker_advance(now, ptemp);
        break;
    default:
        wsp_checker_stop();
        break;
    }
    return APR_SUCCESS;
}

int wsp_checker_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s)
{
    APR_OPTIONAL_FN_TYPE(ap_watchdog_get_instance) *get;
    APR_OPTIONAL_FN_TYPE(ap_watchdog_register_callback) *reg;
    ap_watchdog_t *wd;
    apr_status_t rv;

    (void)plog;
    (void)ptemp;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG
        || !wsp_checker_wanted()) {
        return OK;
    }
    get = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance);
    reg = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback);
    if (!get || !reg) {
        return wsp_checker_check_config(s);
    }
    wsp_ck_server = s;
    if ((rv = get(&wd, WSP_CHECKER_NAME, 0, 1, pconf)) != APR_SUCCESS
        || (rv = reg(wd, AP_WD_TM_SLICE, s, wsp_checker_callback))
           != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ws_persist: cannot "
                     "register the health checker with mod_watchdog");
        return !OK;
    }
    return OK;
}

void wsp_checker_child_init(void)
{
    apr_atomic_set32(&wsp_ck_ready, 1);
}
