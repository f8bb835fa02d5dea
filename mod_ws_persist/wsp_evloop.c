/* The event-MPM driver. The handler answers 101 and returns SUSPENDED; in
 * the suspend_connection hook (the MPM is done with the connection) the
 * pipe goes to this child's loop thread, which polls every pipe's sockets
 * in one apr_pollset, keeps their wake-up times in a skiplist and runs the
 * same state machine as the worker-thread loop. When a pipe ends the loop
 * finishes the request (logging it), closes the connection lingering and
 * destroys its pool, which the MPM counts out as a suspended connection. */
#include <stdlib.h>
#include <unistd.h>

#include "apr_poll.h"
#include "apr_ring.h"
#include "apr_skiplist.h"
#include "apr_thread_proc.h"
#include "apr_thread_mutex.h"
#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "scoreboard.h"

#include "wsp_evloop.h"
#include "wsp_loop.h"
#include "wsp_registry.h"
#include "wsp_shared.h"
#include "wsp_sock.h"

#define WSP_EV_SETTLE  apr_time_from_msec(100)
#define WSP_EV_LINGER  apr_time_from_sec(2)
#define WSP_EV_LINGER_BUDGET (64 * 1024)
#define WSP_EV_BATCH   256
#define WSP_EV_RECHECK apr_time_from_msec(500)
/* Events older than this may no longer tell the truth about a backend */
#define WSP_EV_STALE 200

int wsp_evloop_wanted = 1;
int wsp_evloop_threads = 0;

#define WSP_EV_MAX_THREADS 64

typedef struct wsp_ev_t wsp_ev_t;

/* One socket of a pipe (WSP_SOCK_*), as a poll result names it. */
typedef struct {
    wsp_ev_t *ep;
    int which;
} wsp_ev_side_t;

struct wsp_ev_t {
    APR_RING_ENTRY(wsp_ev_t) link;
    struct wsp_evloop_t *loop;
    wsp_pipe_t *p;                 /* NULL once the pipe is gone */
    request_rec *r;                /* NULL once the request is finished */
    conn_rec *c;                   /* NULL: a detached session's entry,
                                    * in the heap, with no connection */
    apr_pollfd_t pfd[WSP_SOCKS];
    apr_int16_t reg[WSP_SOCKS];    /* events registered, 0: none */
    apr_int16_t rev[WSP_SOCKS];    /* events seen this round */
    wsp_ev_side_t side[WSP_SOCKS];
    int active;
    wsp_ev_t *next_active;
    apr_time_t wake_at;            /* the timer registered, 0: none */
    apr_skiplistnode *tnode;
    apr_time_t settle_at;          /* the MPM may touch c until then */
    int finishing;                 /* the pipe is over, c to be closed */
    int lingering;                 /* draining the client before close */
    apr_time_t linger_until;
};

APR_RING_HEAD(wsp_ev_ring, wsp_ev_t);

typedef struct wsp_evloop_t {
    apr_pool_t *pool;              /* the loop thread's own */
    apr_pool_t *qpool;             /* the arrays', used under lock */
    server_rec *s;
    apr_pollset_t *ps;
    apr_skiplist *timers;
    apr_thread_t *thread;
    apr_thread_mutex_t *lock;      /* guards incoming and count */
    apr_array_header_t *incoming;  /* adopted pipes not yet seen */
    apr_array_header_t *taken;     /* the loop's swap of incoming */
    struct wsp_ev_ring live;
    volatile int stop;
    volatile int poked;            /* a handover was asked for */
    volatile int count;
    apr_uint32_t admin_epoch;      /* of the last look at drains */
    apr_time_t stop_seen;          /* the MPM began a graceful stop */
    apr_time_t polled_at;          /* when the last poll returned */
    int closing_all;               /* its pipes were told 1001 */
    wsp_ev_t *active;
} wsp_evloop_t;

/* This child's loops; a new pipe goes to the one with the fewest. */
static wsp_evloop_t **wsp_evs;
static int wsp_nev;
static volatile int wsp_ev_stopping;

static int wsp_ev_cmp(void *a, void *b)
{
    const wsp_ev_t *x = a, *y = b;

    if (x->wake_at != y->wake_at) {
        return x->wake_at < y->wake_at ? -1 : 1;
    }
    return x == y ? 0 : (x < y ? -1 : 1);
}

static void wsp_ev_activate(wsp_evloop_t *L, wsp_ev_t *ep)
{
    if (!ep->active) {
        ep->active = 1;
        ep->next_active = L->active;
        L->active = ep;
    }
}

static void wsp_ev_timer(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t at)
{
    if (ep->tnode && at && at >= ep->wake_at) {
        return;                     /* an earlier wake-up stays: a spare run
                                     * is cheaper than moving the timer */
    }
    if (ep->tnode) {
        apr_skiplist_remove_node(L->timers, ep->tnode, NULL);
        ep->tnode = NULL;
        ep->wake_at = 0;
    }
    if (at) {
        ep->wake_at = at;
        ep->tnode = apr_skiplist_add(L->timers, ep);
    }
}

/* Keep one socket's registration in step with what the pipe wants. */
static void wsp_ev_watch(wsp_evloop_t *L, wsp_ev_t *ep, int which,
                         apr_socket_t *sock, apr_int16_t want)
{
    apr_pollfd_t *pfd = &ep->pfd[which];
    apr_int16_t *reg = &ep->reg[which];

    if (*reg && (pfd->desc.s != sock || *reg != want)) {
        apr_pollset_remove(L->ps, pfd);
        *reg = 0;
    }
    if (want && sock && !*reg) {
        pfd->desc_type = APR_POLL_SOCKET;
        pfd->desc.s = sock;
        pfd->reqevents = want;
        pfd->rtnevents = 0;
        pfd->client_data = &ep->side[which];
        pfd->p = NULL;
        if (apr_pollset_add(L->ps, pfd) == APR_SUCCESS) {
            *reg = want;
        }
    }
}

/* The pipe is about to close a backend socket. */
static void wsp_ev_bclose(void *baton, apr_socket_t *sock)
{
    wsp_ev_t *ep = baton;
    int i;

    for (i = WSP_SOCK_BACKEND; i < WSP_SOCKS; i++) {
        if (ep->reg[i] && ep->pfd[i].desc.s == sock) {
            wsp_ev_watch(ep->loop, ep, i, NULL, 0);
        }
    }
}

static void wsp_ev_poke(void *baton)
{
    wsp_evloop_t *L = baton;

    L->poked = 1;
    apr_pollset_wakeup(L->ps);
}

/* The pipe left this loop (ended or handed over). */
static void wsp_ev_forget_pipe(wsp_evloop_t *L, wsp_ev_t *ep)
{
    wsp_ev_watch(L, ep, WSP_SOCK_BACKEND, NULL, 0);
    wsp_ev_watch(L, ep, WSP_SOCK_SECOND, NULL, 0);
    if (ep->p) {
        wsp_pipe_set_driver(ep->p, NULL, NULL);
    }
    ep->p = NULL;
}

/* Last step: the MPM counts a suspended connection out when its pool
 * goes, so the state must say suspended then. */
/* An entry leaves the loop: no socket, no timer, not counted. */
static void wsp_ev_leave(wsp_evloop_t *L, wsp_ev_t *ep)
{
    int i;

    for (i = 0; i < WSP_SOCKS; i++) {
        wsp_ev_watch(L, ep, i, NULL, 0);
    }
    wsp_ev_timer(L, ep, 0);
    APR_RING_REMOVE(ep, link);
    apr_thread_mutex_lock(L->lock);
    L->count--;
    apr_thread_mutex_unlock(L->lock);
}

static void wsp_ev_release(wsp_evloop_t *L, wsp_ev_t *ep)
{
    conn_rec *c = ep->c;

    wsp_ev_leave(L, ep);
    if (c->cs) {
        c->cs->state = CONN_STATE_SUSPENDED;
    }
    apr_pool_destroy(c->pool);        /* ep lived there too */
}

/* A detached session's entry leaves the loop (its pipe ended or was
 * resumed elsewhere). */
static void wsp_ev_drop_detached(wsp_evloop_t *L, wsp_ev_t *ep)
{
    wsp_ev_leave(L, ep);
    free(ep);
}

static void wsp_ev_init_sides(wsp_ev_t *ep)
{
    int i;

    for (i = 0; i < WSP_SOCKS; i++) {
        ep->side[i].ep = ep;
        ep->side[i].which = i;
    }
}

static void wsp_ev_bclose(void *baton, apr_socket_t *sock);
static void wsp_ev_activate(wsp_evloop_t *L, wsp_ev_t *ep);
static void wsp_ev_finish(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t now);

/* The pipe's client dropped and its session stays (DESIGN 7): the pipe
 * goes on in an entry of its own, and this one finishes the client's
 * request and connection as for any pipe's end. */
static void wsp_ev_detach(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t now)
{
    wsp_pipe_t *p = ep->p;
    wsp_ev_t *dp = calloc(1, sizeof(*dp));

    wsp_ev_watch(L, ep, WSP_SOCK_CLIENT, NULL, 0);
    wsp_ev_forget_pipe(L, ep);
    if (!dp) {
        /* no memory for the entry: the session cannot stay */
        wsp_pipe_going_away(p);
        wsp_pipe_end(p);
        wsp_ev_finish(L, ep, now);
        return;
    }
    dp->loop = L;
    dp->p = p;
    wsp_ev_init_sides(dp);
    APR_RING_ELEM_INIT(dp, link);
    APR_RING_INSERT_TAIL(&L->live, dp, wsp_ev_t, link);
    apr_thread_mutex_lock(L->lock);
    L->count++;
    apr_thread_mutex_unlock(L->lock);
    wsp_pipe_set_driver(p, wsp_ev_bclose, dp);
    wsp_ev_activate(L, dp);
    wsp_ev_finish(L, ep, now);
}

/* Finish the request (logs it, frees r->pool) and start a lingering
 * close of the client connection. */
static void wsp_ev_finish(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t now)
{
    request_rec *r = ep->r;

    if (now < ep->settle_at) {
        ep->finishing = 1;
        wsp_ev_timer(L, ep, ep->settle_at);
        return;
    }
    ep->finishing = 0;
    ep->r = NULL;
    ap_finalize_request_protocol(r);
    ap_process_request_after_handler(r);
    if (ap_start_lingering_close(ep->c)) {
        wsp_ev_release(L, ep);
        return;
    }
    ep->lingering = 1;
    ep->linger_until = now + WSP_EV_LINGER;
    wsp_ev_watch(L, ep, WSP_SOCK_CLIENT, ap_get_conn_socket(ep->c),
                 APR_POLLIN);
    wsp_ev_timer(L, ep, ep->linger_until);
}

/* The client's last bytes are read and dropped until it closes or the
 * linger time is over: at most a budget a run, never waiting (the socket
 * has a zero timeout since the upgrade). */
static void wsp_ev_linger(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t now)
{
    apr_socket_t *sock = ap_get_conn_socket(ep->c);
    apr_size_t total = 0;
    char buf[4096];

    while (now < ep->linger_until) {
        apr_size_t n = sizeof(buf);
        apr_status_t rv = wsp_sock_recv(sock, buf, &n);

        if (rv == APR_SUCCESS && n > 0
            && (total += n) < WSP_EV_LINGER_BUDGET) {
            continue;
        }
        if (APR_STATUS_IS_EAGAIN(rv) || (rv == APR_SUCCESS && n > 0)) {
            /* poll says when there is more; the timer (which an earlier
             * wake-up may have taken the place of) ends the wait */
            wsp_ev_timer(L, ep, ep->linger_until);
            return;
        }
        break;
    }
    wsp_ev_release(L, ep);
}

static void wsp_ev_process(wsp_evloop_t *L, wsp_ev_t *ep, apr_time_t now)
{
    wsp_pipe_t *p = ep->p;
    wsp_want_t w;

    if (ep->lingering) {
        wsp_ev_linger(L, ep, now);
        return;
    }
    if (ep->finishing) {
        wsp_ev_finish(L, ep, now);
        return;
    }
    if (wsp_pipe_handover_begin(p)) {
        wsp_ev_watch(L, ep, WSP_SOCK_CLIENT, NULL, 0);
        wsp_ev_forget_pipe(L, ep);
        if (!ep->c) {
            /* the entry goes before the pipe is the claimer's */
            wsp_ev_drop_detached(L, ep);
            wsp_pipe_handover_end(p);
            return;
        }
        wsp_pipe_handover_end(p);
        wsp_ev_finish(L, ep, now);
        return;
    }
    /* Client bytes are about to go to the backend, and other pipes ran
     * since poll spoke: the backend may have closed meanwhile (a killed
     * backend ends thousands of connections at once), and what is
     * written after its FIN is lost. A look (one recv that usually finds
     * nothing) is paid only when the news is old. */
    if (((ep->rev[WSP_SOCK_CLIENT] & APR_POLLIN)
         || wsp_pipe_backend_bound(p))
        && (ep->reg[WSP_SOCK_BACKEND] & APR_POLLIN)
        && !(ep->rev[WSP_SOCK_BACKEND] & APR_POLLIN)
        && apr_time_now() - L->polled_at > WSP_EV_STALE) {
        ep->rev[WSP_SOCK_BACKEND] |= APR_POLLIN;
    }
    wsp_pipe_run(p, ep->rev);
    memset(ep->rev, 0, sizeof(ep->rev));
    if (wsp_pipe_state(p) == WSP_ST_DONE) {
        wsp_ev_watch(L, ep, WSP_SOCK_CLIENT, NULL, 0);
        wsp_ev_forget_pipe(L, ep);
        wsp_pipe_end(p);
        if (!ep->c) {
            wsp_ev_drop_detached(L, ep);
            return;
        }
        wsp_ev_finish(L, ep, now);
        return;
    }
    if (ep->c && wsp_pipe_detached(p)) {
        wsp_ev_detach(L, ep, now);
        return;
    }
    wsp_pipe_want(p, &w);
    wsp_ev_watch(L, ep, WSP_SOCK_CLIENT, w.sock[WSP_SOCK_CLIENT],
                 w.events[WSP_SOCK_CLIENT]);
    if ((ep->reg[WSP_SOCK_BACKEND]
         && ep->pfd[WSP_SOCK_BACKEND].desc.s != w.sock[WSP_SOCK_BACKEND])
        || (ep->reg[WSP_SOCK_SECOND]
            && ep->pfd[WSP_SOCK_SECOND].desc.s != w.sock[WSP_SOCK_SECOND])) {
        /* a move swapped the two backend sockets: a socket cannot be in
         * the pollset twice, so both leave before either comes back */
        wsp_ev_watch(L, ep, WSP_SOCK_BACKEND, NULL, 0);
        wsp_ev_watch(L, ep, WSP_SOCK_SECOND, NULL, 0);
    }
    wsp_ev_watch(L, ep, WSP_SOCK_BACKEND, w.sock[WSP_SOCK_BACKEND],
                 w.events[WSP_SOCK_BACKEND]);
    wsp_ev_watch(L, ep, WSP_SOCK_SECOND, w.sock[WSP_SOCK_SECOND],
                 w.events[WSP_SOCK_SECOND]);
    wsp_ev_timer(L, ep, w.wake_at);
}

/* Child exit: tell both peers of every live pipe that we go away. */
static void wsp_ev_shutdown(wsp_evloop_t *L)
{
    wsp_ev_t *ep;

    for (ep = APR_RING_FIRST(&L->live); ep != APR_RING_SENTINEL(&L->live,
         wsp_ev_t, link); ep = APR_RING_NEXT(ep, link)) {
        if (ep->p) {
            wsp_pipe_going_away(ep->p);
            wsp_registry_set_wake(ep->p, NULL, NULL);
            wsp_ev_forget_pipe(L, ep);
        }
    }
}

/* See wsp_stop_due(). */
static int wsp_ev_stop_due(wsp_evloop_t *L, apr_time_t now)
{
    return !L->closing_all && wsp_stop_due(&L->stop_seen, now);
}

static void wsp_ev_close_all(wsp_evloop_t *L)
{
    wsp_ev_t *ep;

    L->closing_all = 1;
    for (ep = APR_RING_FIRST(&L->live); ep != APR_RING_SENTINEL(&L->live,
         wsp_ev_t, link); ep = APR_RING_NEXT(ep, link)) {
        if (ep->p && wsp_pipe_session(ep->p)) {
            wsp_pipe_going_away(ep->p);
            wsp_ev_activate(L, ep);
        }
    }
}

/* See wsp_mpm_stopping(): detached sessions end, live pipes have their
 * grace. */
static void wsp_ev_end_detached(wsp_evloop_t *L)
{
    wsp_ev_t *ep;

    for (ep = APR_RING_FIRST(&L->live); ep != APR_RING_SENTINEL(&L->live,
         wsp_ev_t, link); ep = APR_RING_NEXT(ep, link)) {
        if (ep->p && wsp_pipe_detached(ep->p) && wsp_pipe_session(ep->p)) {
            wsp_pipe_going_away(ep->p);
            wsp_ev_activate(L, ep);
        }
    }
}

static void * APR_THREAD_FUNC wsp_ev_main(apr_thread_t *t, void *data)
{
    wsp_evloop_t *L = data;

    while (!L->stop) {
        const apr_pollfd_t *res;
        apr_int32_t n = 0, i;
        apr_interval_time_t timeout = -1;
        wsp_ev_t *ep, *next = apr_skiplist_peek(L->timers);
        apr_time_t now;
        apr_status_t rv;

        if (next) {
            timeout = next->wake_at - apr_time_now();
            if (timeout < 0) {
                timeout = 0;
            }
        }
        /* an administrator's drain is looked for at least this often */
        if (timeout < 0 || timeout > WSP_EV_RECHECK) {
            timeout = WSP_EV_RECHECK;
        }
        rv = apr_pollset_poll(L->ps, timeout, &n, &res);
        now = L->polled_at = apr_time_now();
        for (i = 0; rv == APR_SUCCESS && i < n; i++) {
            wsp_ev_side_t *side = res[i].client_data;

            side->ep->rev[side->which] |= res[i].rtnevents;
            wsp_ev_activate(L, side->ep);
        }
        apr_thread_mutex_lock(L->lock);
        if (L->incoming->nelts) {
            apr_array_header_t *tmp = L->taken;

            L->taken = L->incoming;
            L->incoming = tmp;
        }
        apr_thread_mutex_unlock(L->lock);
        for (i = 0; i < L->taken->nelts; i++) {
            ep = APR_ARRAY_IDX(L->taken, i, wsp_ev_t *);
            APR_RING_INSERT_TAIL(&L->live, ep, wsp_ev_t, link);
            wsp_registry_set_wake(ep->p, wsp_ev_poke, L);
            wsp_ev_activate(L, ep);
        }
        apr_array_clear(L->taken);
        if (L->closing_all || wsp_ev_stop_due(L, now)) {
            wsp_ev_close_all(L);      /* and pipes adopted since */
        }
        else if (wsp_mpm_stopping()) {
            wsp_ev_end_detached(L);
        }
        while ((ep = apr_skiplist_peek(L->timers)) && ep->wake_at <= now) {
            wsp_ev_timer(L, ep, 0);
            wsp_ev_activate(L, ep);
        }
        if (L->admin_epoch != wsp_shared_admin_epoch()) {
            /* an administrator acted: wake the pipes whose backend now
             * drains, idle ones included */
            L->admin_epoch = wsp_shared_admin_epoch();
            for (ep = APR_RING_FIRST(&L->live);
                 ep != APR_RING_SENTINEL(&L->live, wsp_ev_t, link);
                 ep = APR_RING_NEXT(ep, link)) {
                if (ep->p && wsp_pipe_should_move(ep->p)) {
                    wsp_ev_activate(L, ep);
                }
            }
        }
        if (L->poked) {
            L->poked = 0;
            for (ep = APR_RING_FIRST(&L->live);
                 ep != APR_RING_SENTINEL(&L->live, wsp_ev_t, link);
                 ep = APR_RING_NEXT(ep, link)) {
                if (ep->p && wsp_pipe_handover_asked(ep->p)) {
                    wsp_ev_activate(L, ep);
                }
            }
        }
        while ((ep = L->active)) {
            L->active = ep->next_active;
            ep->active = 0;
            wsp_ev_process(L, ep, now);
        }
    }
    (void)t;
    wsp_ev_shutdown(L);
    return NULL;
}

static apr_status_t wsp_ev_stop(void *data)
{
    int i;

    (void)data;
    wsp_ev_stopping = 1;
    for (i = 0; i < wsp_nev; i++) {
        wsp_evs[i]->stop = 1;
        apr_pollset_wakeup(wsp_evs[i]->ps);
    }
    for (i = 0; i < wsp_nev; i++) {
        apr_status_t rv;

        apr_thread_join(&rv, wsp_evs[i]->thread);
    }
    wsp_nev = 0;
    return APR_SUCCESS;
}

static wsp_evloop_t *wsp_ev_start(apr_pool_t *pchild, server_rec *s)
{
    wsp_evloop_t *L;
    apr_status_t rv;

    L = apr_pcalloc(pchild, sizeof(*L));
    /* Pools are not thread-safe: the skiplist allocates its nodes from a
     * pool only this loop's thread uses, the arrays grow from one used
     * only under L->lock. */
    if ((rv = apr_pool_create(&L->pool, pchild)) != APR_SUCCESS
        || (rv = apr_pool_create(&L->qpool, pchild)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, "ws_persist: cannot start "
                     "an event loop thread");
        return NULL;
    }
    L->s = s;
    APR_RING_INIT(&L->live, wsp_ev_t, link);
    L->incoming = apr_array_make(L->qpool, 64, sizeof(wsp_ev_t *));
    L->taken = apr_array_make(L->qpool, 64, sizeof(wsp_ev_t *));
    rv = apr_pollset_create_ex(&L->ps, 1024, pchild,
                               APR_POLLSET_NOCOPY | APR_POLLSET_WAKEABLE,
                               APR_POLLSET_DEFAULT);
    if (rv == APR_SUCCESS) {
        rv = apr_skiplist_init(&L->timers, L->pool);
    }
    if (rv == APR_SUCCESS) {
        apr_skiplist_set_compare(L->timers, wsp_ev_cmp, wsp_ev_cmp);
        rv = apr_thread_mutex_create(&L->lock, APR_THREAD_MUTEX_DEFAULT,
                                     pchild);
    }
    if (rv == APR_SUCCESS) {
        rv = apr_thread_create(&L->thread, NULL, wsp_ev_main, L, pchild);
    }
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, "ws_persist: cannot start "
                     "an event loop thread");
        return NULL;
    }
    return L;
}

void wsp_evloop_child_init(apr_pool_t *pchild, server_rec *s)
{
    int async = 0, n = wsp_evloop_threads, i;

    if (!wsp_evloop_wanted || strcmp(ap_show_mpm(), "event")
        || ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) != APR_SUCCESS || !async) {
        return;
    }
    if (n <= 0) {
        /* one loop per CPU: a loop is one thread's worth of relaying */
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        n = cpus < 1 ? 1 : cpus > WSP_EV_MAX_THREADS ? WSP_EV_MAX_THREADS
                                                     : (int)cpus;
    }
    wsp_evs = apr_pcalloc(pchild, n * sizeof(*wsp_evs));
    for (i = 0; i < n; i++) {
        if (!(wsp_evs[wsp_nev] = wsp_ev_start(pchild, s))) {
            break;
        }
        wsp_nev++;
    }
    if (!wsp_nev) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "ws_persist: no event "
                     "loop; pipes hold worker threads instead");
        return;
    }
    apr_pool_pre_cleanup_register(pchild, NULL, wsp_ev_stop);
}

int wsp_evloop_available(void)
{
    return wsp_nev > 0 && !wsp_ev_stopping;
}

void wsp_evloop_mark(request_rec *r, wsp_pipe_t *p)
{
    ap_set_module_config(r->connection->conn_config, &ws_persist_module, p);
}

void wsp_evloop_suspended(conn_rec *c, request_rec *r)
{
    wsp_pipe_t *p = ap_get_module_config(c->conn_config, &ws_persist_module);
    wsp_evloop_t *L;
    wsp_ev_t *ep;
    int i;

    if (!p || !wsp_nev) {
        return;
    }
    /* The MPM runs this hook for its own lingering closes too: only a
     * connection it suspended is ours. One it closes itself takes the
     * pipe's end with it. */
    ap_set_module_config(c->conn_config, &ws_persist_module, NULL);
    if (!c->cs || c->cs->state != CONN_STATE_SUSPENDED) {
        WSP_LOG(p, APLOG_INFO, 0, "client connection closed by the MPM "
                "before the pipe started");
        wsp_pipe_end(p);
        return;
    }
    for (L = wsp_evs[0], i = 1; i < wsp_nev; i++) {
        if (wsp_evs[i]->count < L->count) {
            L = wsp_evs[i];
        }
    }
    ep = apr_pcalloc(c->pool, sizeof(*ep));
    ep->loop = L;
    ep->p = p;
    ep->r = r;
    ep->c = c;
    wsp_ev_init_sides(ep);
    ep->settle_at = apr_time_now() + WSP_EV_SETTLE;
    APR_RING_ELEM_INIT(ep, link);
    wsp_pipe_set_driver(p, wsp_ev_bclose, ep);
    apr_thread_mutex_lock(L->lock);
    APR_ARRAY_PUSH(L->incoming, wsp_ev_t *) = ep;
    L->count++;
    apr_thread_mutex_unlock(L->lock);
    apr_pollset_wakeup(L->ps);
}

int wsp_evloop_count(void)
{
    int i, n = 0;

    for (i = 0; i < wsp_nev; i++) {
        n += wsp_evs[i]->count;
    }
    return n;
}
