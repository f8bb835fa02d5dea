/* One pipe driven by poll() in the request's worker thread. Back-off and
 * ping waits are poll timeouts; another thread wakes it through a pipe
 * when a newer connection wants the pipe (replace mode). A client on an
 * HTTP/2 stream is polled on the pipe mod_http2 signals its input on. */
#include "apr_file_io.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "scoreboard.h"

#include "wsp_loop.h"
#include "wsp_registry.h"
#include "wsp_shared.h"

#define WSP_LOOP_RECHECK apr_time_from_msec(500)

typedef struct {
    apr_file_t *rd;
    apr_file_t *wr;
} wsp_waker_t;

static void wsp_loop_wake(void *baton)
{
    wsp_waker_t *w = baton;
    char b = 1;
    apr_size_t n = 1;

    apr_file_write(w->wr, &b, &n);
}

static void wsp_loop_drain(wsp_waker_t *w)
{
    char buf[64];
    apr_size_t n = sizeof(buf);

    while (apr_file_read(w->rd, buf, &n) == APR_SUCCESS && n > 0) {
        n = sizeof(buf);
    }
}

/* One waker per request, kept across the calls before and after the 101;
 * its pipe closes with the request's pool. */
static wsp_waker_t *wsp_loop_waker(request_rec *r)
{
    wsp_waker_t *w = ap_get_module_config(r->request_config,
                                          &ws_persist_module);

    if (!w) {
        w = apr_pcalloc(r->pool, sizeof(*w));
        if (apr_file_pipe_create_ex(&w->rd, &w->wr, APR_FULL_NONBLOCK,
                                    r->pool) != APR_SUCCESS) {
            return NULL;
        }
        ap_set_module_config(r->request_config, &ws_persist_module, w);
    }
    return w;
}

/* The MPM waits for every connection at a graceful stop, and a pipe
 * would only end when the child does: so it is closed with 1001 a second
 * before GracefulShutdownTimeout runs out (the parent then kills the
 * child). With no timeout it stays until it ends, as httpd lets any
 * connection. A graceful restart (the parent moved to a new generation
 * first) keeps it too: it ends in its time. */
int wsp_stop_due(apr_time_t *seen, apr_time_t now)
{
    int state = AP_MPMQ_RUNNING, gen = 0;
    apr_interval_time_t grace;

    if (ap_mpm_query(AP_MPMQ_MPM_STATE, &state)
        || state != AP_MPMQ_STOPPING) {
        return 0;
    }
    if (!*seen) {
        *seen = now;
    }
    if (ap_mpm_query(AP_MPMQ_GENERATION, &gen) == APR_SUCCESS
        && ap_scoreboard_image
        && ap_scoreboard_image->global->running_generation != gen) {
        return 0;
    }
    if (ap_graceful_shutdown_timeout <= 0) {
        return 0;
    }
    grace = apr_time_from_sec(ap_graceful_shutdown_timeout);
    grace = grace > apr_time_from_sec(2) ? grace - apr_time_from_sec(1)
                                         : grace / 2;
    return now >= *seen + grace;
}

int wsp_mpm_stopping(void)
{
    int state = AP_MPMQ_RUNNING;

    return ap_mpm_query(AP_MPMQ_MPM_STATE, &state) == APR_SUCCESS
           && state == AP_MPMQ_STOPPING;
}

wsp_loop_result_e wsp_loop_run(wsp_pipe_t *p, request_rec *r)
{
    /* a handover waits for the 101, so the waker (two descriptors, held
     * as long as the request) is made only once the client is upgraded:
     * a pipe that goes to the event loop never needs it */
    wsp_waker_t *w = wsp_pipe_open(p) ? wsp_loop_waker(r) : NULL;
    wsp_loop_result_e res;
    apr_pollfd_t pfd[WSP_SOCKS + 2];      /* + an h2 client's file, the
                                           * waker */
    apr_uint32_t epoch = wsp_shared_admin_epoch();
    apr_time_t stop_seen = 0;
    int stopping = 0;

    if (w) {
        wsp_registry_set_wake(p, wsp_loop_wake, w);
    }
    memset(pfd, 0, sizeof(pfd));
    for (;;) {
        apr_int16_t rev[WSP_SOCKS];
        apr_interval_time_t timeout = -1;
        apr_int32_t n = 0, nsig = 0, i;
        wsp_want_t want;

        if (wsp_pipe_state(p) == WSP_ST_DONE) {
            res = WSP_LOOP_DONE;
            break;
        }
        if (wsp_pipe_state(p) == WSP_ST_FAILED) {
            res = WSP_LOOP_FAILED;
            break;
        }
        if (wsp_pipe_upgrade_due(p)) {
            res = WSP_LOOP_LIVE;
            break;
        }
        if (wsp_pipe_handover_begin(p)) {
            wsp_pipe_handover_end(p);
            return WSP_LOOP_HANDED_OVER;
        }
        if (!stopping && wsp_pipe_session(p)
            && ((wsp_pipe_detached(p) && wsp_mpm_stopping())
                || wsp_stop_due(&stop_seen, apr_time_now()))) {
            stopping = 1;
            wsp_pipe_going_away(p);
            continue;
        }
        wsp_pipe_want(p, &want);
        memset(rev, 0, sizeof(rev));
        if (want.client_file && want.events[WSP_SOCK_CLIENT]) {
            pfd[n].desc_type = APR_POLL_FILE;
            pfd[n].desc.f = want.client_file;
            pfd[n].reqevents = APR_POLLIN;
            pfd[n].client_data = &rev[WSP_SOCK_CLIENT];
            pfd[n++].p = r->pool;
        }
        for (i = 0; i < WSP_SOCKS; i++) {
            if (want.sock[i] && want.events[i]) {
                pfd[n].desc_type = APR_POLL_SOCKET;
                pfd[n].desc.s = want.sock[i];
                pfd[n].reqevents = want.events[i];
                pfd[n].client_data = &rev[i];
                pfd[n++].p = r->pool;
            }
        }
        if (w) {
            pfd[n].desc_type = APR_POLL_FILE;
            pfd[n].desc.f = w->rd;
            pfd[n].reqevents = APR_POLLIN;
            pfd[n].client_data = NULL;
            pfd[n++].p = r->pool;
        }
        if (want.wake_at) {
            timeout = want.wake_at - apr_time_now();
            if (timeout < 0) {
                timeout = 0;
            }
        }
        /* an administrator may drain the backend at any time */
        if (timeout < 0 || timeout > WSP_LOOP_RECHECK) {
            timeout = WSP_LOOP_RECHECK;
        }
        if (apr_poll(pfd, n, &nsig, timeout) != APR_SUCCESS
            && (!want.wake_at || apr_time_now() < want.wake_at)
            && epoch == wsp_shared_admin_epoch()) {
            continue;               /* the recheck found no administrator's
                                     * action: nothing to run */
        }
        epoch = wsp_shared_admin_epoch();
        if (nsig > 0) {
            for (i = 0; i < n; i++) {
                if (!pfd[i].rtnevents) {
                    continue;
                }
                if (pfd[i].client_data) {
                    *(apr_int16_t *)pfd[i].client_data = pfd[i].rtnevents;
                }
                else {
                    wsp_loop_drain(w);
                }
                pfd[i].rtnevents = 0;
            }
        }
        wsp_pipe_run(p, rev);
    }
    wsp_registry_set_wake(p, NULL, NULL);
    return res;
}
