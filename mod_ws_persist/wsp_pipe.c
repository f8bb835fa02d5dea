/* The pipe: one client id, its client hop, its backend hops and the
 * queue between them, as a state machine with named states. This file
 * holds the state, the driver interface and the pipe's life; the hops'
 * I/O, failover, moves and closing each have a file of their own. Nothing
 * here blocks: drivers poll what wsp_pipe_want() asks for. */
#include "httpd.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_ssl.h"
#include "util_filter.h"

#include "wsp_pipe_int.h"
#include "wsp_config.h"
#include "wsp_registry.h"

static const char *const wsp_state_names[] = {
    "connecting", "live", "failing-over", "moving", "detached", "closing",
    "done", "failed"
};

const char *wsp_pipe_backend_url(const wsp_pipe_t *p)
{
    return p->b->be ? p->b->be->url : "-";
}

/* Every change of state goes through here, and is logged. */
void wsp_transit(wsp_pipe_t *p, wsp_state_e to, const char *why)
{
    if (p->state == to) {
        return;
    }
    WSP_LOG(p, APLOG_TRACE1, 0, "state %s -> %s (%s)",
            wsp_state_names[p->state], wsp_state_names[to], why);
    p->state = to;
}

int wsp_closing(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_CLOSING || p->state == WSP_ST_DONE;
}

static int wsp_relaying(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE || p->state == WSP_ST_MOVING
           || p->state == WSP_ST_DETACHED;
}

int wsp_pipe_detached(const wsp_pipe_t *p)
{
    return p->detach_until != 0;
}

/* A backend took over relaying: live, or detached without a client. */
void wsp_settle(wsp_pipe_t *p, const char *why)
{
    wsp_transit(p, wsp_pipe_detached(p) ? WSP_ST_DETACHED : WSP_ST_LIVE,
                why);
}

int wsp_connecting(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_CONNECTING || p->state == WSP_ST_FAILING_OVER;
}

wsp_state_e wsp_pipe_state(const wsp_pipe_t *p)
{
    return p->state;
}

int wsp_pipe_upgrade_due(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE && p->client && !p->client->upgraded;
}

int wsp_pipe_backend_bound(const wsp_pipe_t *p)
{
    return p->q.bytes > 0 || (p->client && p->client->more_input);
}

int wsp_pipe_open(const wsp_pipe_t *p)
{
    return !wsp_closing(p) && p->state != WSP_ST_FAILED && p->client
           && p->client->upgraded;
}

int wsp_pipe_session(const wsp_pipe_t *p)
{
    return wsp_pipe_open(p)
           || (wsp_pipe_detached(p) && !wsp_closing(p));
}

/* While a backend takes the buffer (or will take what a slow one left), a
 * full buffer stops reading the client; in an outage that began with room
 * to spare, the cap closes the client with 1013 instead. */
int wsp_backpressure(const wsp_pipe_t *p)
{
    return wsp_relaying(p)
           || (p->state == WSP_ST_FAILING_OVER && p->full_at_outage);
}

/* A hop the pipe does not read, by its own choice, cannot show its pong:
 * the client while a slow backend holds the buffer full, the backend
 * while a slow client's output is full. Such a hop counts as heard from
 * now; its wait for a pong starts once the pipe reads it again. */
int wsp_client_held(const wsp_pipe_t *p)
{
    return wsp_backpressure(p) && p->q.cost >= p->conf->buffer_limit;
}

int wsp_client_output_full(const wsp_pipe_t *p)
{
    return p->client && p->client->out_bytes >= WSP_OUT_HIGH;
}

static void wsp_pings(wsp_pipe_t *p, apr_time_t now)
{
    apr_interval_time_t iv = p->conf->ping_interval;
    wsp_hop_t *cl = p->client;
    static const unsigned char beat[] = "wsp";

    if (iv <= 0 || wsp_closing(p)) {
        return;
    }
    if (cl && cl->upgraded && !cl->gone) {
        if (wsp_client_held(p)) {
            cl->last_rx = now;
            cl->ping_sent = 0;
        }
        if (cl->ping_sent && now - cl->ping_sent >= iv) {
            wsp_client_gone(p, now, "no pong", APR_TIMEUP);
            return;
        }
        if (!cl->ping_sent && now - cl->last_rx >= iv) {
            wsp_client_ctrl(p, WSP_OP_PING, beat, 3);
            cl->ping_sent = now;
        }
    }
    if (wsp_relaying(p) && p->b->bc && !wsp_retiring(p)) {
        if (wsp_client_output_full(p)) {
            p->b->last_rx = now;
            p->b->ping_sent = 0;
        }
        if (p->b->ping_sent && now - p->b->ping_sent >= iv) {
            wsp_backend_ended(p, now, WSP_END_NO_PONG, 0, NULL, 0, "no pong");
            return;
        }
        if (!p->b->ping_sent && now - p->b->last_rx >= iv) {
            wsp_backend_ctrl(p, WSP_OP_PING, beat, 3);
            p->b->ping_sent = now;
        }
    }
}

#define WSP_READY(ev) (((ev) & (APR_POLLIN | APR_POLLHUP | APR_POLLERR)) != 0)

void wsp_pipe_set_driver(wsp_pipe_t *p,
                         void (*fn)(void *baton, apr_socket_t *sock),
                         void *baton)
{
    p->on_bclose = fn;
    p->driver_baton = baton;
}

static void wsp_pipe_run_once(wsp_pipe_t *p,
                              const apr_int16_t rev[WSP_SOCKS]);

/* A client connection that dropped while the session stays: the pipe
 * forgets it (it lives in its request's pool), and the driver finishes
 * that connection. */
static void wsp_pipe_release_client(wsp_pipe_t *p)
{
    wsp_hop_t *cl = p->client;

    wsp_hop_drop(&cl->in);
    apr_brigade_cleanup(cl->ibb);
    apr_brigade_cleanup(cl->out);
    p->client = NULL;
}

void wsp_pipe_run(wsp_pipe_t *p, const apr_int16_t rev[WSP_SOCKS])
{
    wsp_pipe_run_once(p, rev);
    if (p->client && p->client->gone && wsp_pipe_detached(p)) {
        wsp_pipe_release_client(p);
    }
    /* the thread's read buffer is the next pipe's */
    if (p->b->bc) {
        wsp_bconn_settle(p->b->bc);
    }
    if (p->b2->bc) {
        wsp_bconn_settle(p->b2->bc);
    }
}

static void wsp_pipe_run_once(wsp_pipe_t *p,
                              const apr_int16_t rev[WSP_SOCKS])
{
    apr_time_t now = apr_time_now();
    int rounds = 0, progress;
    int cready = WSP_READY(rev[WSP_SOCK_CLIENT]);
    int bready = WSP_READY(rev[WSP_SOCK_BACKEND]);
    int aready = WSP_READY(rev[WSP_SOCK_SECOND]);

    /* over TLS, input may wait where poll does not see it */
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN
        && wsp_bconn_buffers_input(p->b->bc)) {
        bready = 1;
    }
    if (p->b2->bc && p->b2->bc->state == WSP_BC_OPEN
        && wsp_bconn_buffers_input(p->b2->bc)) {
        aready = 1;
    }
    if (p->quiesce_at && !p->b2->bc && !wsp_pipe_should_move(p)) {
        p->quiesce_at = 0;            /* the drain was called off */
    }
    if (wsp_move_due(p, now)) {
        wsp_move_start(p, now);
    }
    wsp_detached_step(p, now);
    do {
        progress = wsp_connect_step(p, now);
        progress |= wsp_aux_step(p, now, aready);
        /* the backend first: a close or EOF it reported must be seen
         * before client messages are written into a dead socket */
        progress |= wsp_backend_read(p, now, bready);
        progress |= wsp_client_read(p, now, cready);
        progress |= wsp_backend_flush(p, now);
        progress |= wsp_move_switch(p, now);
        progress |= wsp_client_flush(p, now);
        cready = bready = aready = 0;
        if (p->state == WSP_ST_CONNECTING && p->b->bc == NULL
            && now >= p->retry_at) {
            progress = 1;
        }
    } while (progress && ++rounds < 8 && p->state != WSP_ST_FAILED
             && p->state != WSP_ST_DONE && !wsp_pipe_upgrade_due(p));
    if (wsp_pipe_upgrade_due(p)) {
        return;                       /* the driver sends the 101 first */
    }
    wsp_connect_timeout(p, now);
    wsp_pings(p, now);
    wsp_client_flush(p, now);
    wsp_backend_flush(p, now);
    wsp_check_done(p, now);
}

void wsp_pipe_want(wsp_pipe_t *p, wsp_want_t *want)
{
    apr_int16_t *cev = &want->events[WSP_SOCK_CLIENT];
    apr_int16_t *bev = &want->events[WSP_SOCK_BACKEND];
    apr_int16_t *aev = &want->events[WSP_SOCK_SECOND];
    apr_socket_t **bsock = &want->sock[WSP_SOCK_BACKEND];
    apr_socket_t **asock = &want->sock[WSP_SOCK_SECOND];
    wsp_hop_t *cl = p->client;
    apr_time_t t = 0;
    apr_interval_time_t iv = p->conf->ping_interval;

#define WSP_SOONER(x) do { apr_time_t x_ = (x); \
    if (x_ && (!t || x_ < t)) t = x_; } while (0)

    want->sock[WSP_SOCK_CLIENT] = cl && cl->upgraded && !cl->gone ? cl->sock
                                                                  : NULL;
    want->client_file = cl && cl->upgraded && !cl->gone ? cl->signal : NULL;
    *cev = 0;
    *bsock = NULL;
    *bev = 0;
    *asock = NULL;
    *aev = 0;
    if (cl && cl->upgraded && !cl->gone) {
        if (!cl->close_rcvd && !cl->more_input && !wsp_client_stalled(cl)) {
            *cev |= APR_POLLIN;
        }
        if (cl->want_write && !cl->h2) {
            *cev |= APR_POLLOUT;
        }
        if (cl->more_input && !cl->close_rcvd && !wsp_client_stalled(cl)
            && !wsp_client_held(p)) {
            t = apr_time_now();       /* go on reading once the rest ran */
        }
        if (iv > 0 && !wsp_closing(p)) {
            WSP_SOONER(cl->ping_sent ? cl->ping_sent + iv
                                     : cl->last_rx + iv);
        }
    }
    if (p->b->bc) {
        *bsock = p->b->bc->sock;
        if (p->b->bc->state != WSP_BC_OPEN) {
            *bev = wsp_bconn_handshake_events(p->b->bc);
            WSP_SOONER(p->b->deadline);
        }
        else {
            if (wsp_retiring(p)) {
                if (!p->b->ended
                    && p->b->bc->ilen - p->b->bc->ipos < WSP_IBUF_SIZE) {
                    *bev |= APR_POLLIN;     /* to see it end, see
                                             * wsp_backend_hold() */
                }
            }
            else if (!p->b->close_rcvd && !p->b->owed.pong_due
                && !wsp_client_output_full(p)) {
                /* while it is owed a pong it is not read (DESIGN 8) */
                *bev |= APR_POLLIN;
                if (wsp_bconn_buffers_input(p->b->bc)
                    || p->b->bc->ipos < p->b->bc->ilen) {
                    WSP_SOONER(apr_time_now());  /* input already here */
                }
            }
            if (p->b->want_write) {
                *bev |= APR_POLLOUT;
            }
            if (iv > 0 && !wsp_closing(p)) {
                WSP_SOONER(p->b->ping_sent ? p->b->ping_sent + iv
                                          : p->b->last_rx + iv);
            }
        }
    }
    else if (wsp_connecting(p)) {
        WSP_SOONER(p->retry_at ? p->retry_at : apr_time_now());
    }
    if (wsp_connecting(p)) {
        WSP_SOONER(p->deadline);
    }
    if (wsp_closing(p)) {
        WSP_SOONER(p->close_deadline);
    }
    else if (wsp_pipe_detached(p)) {
        WSP_SOONER(p->detach_until);
    }
    if (p->b2->bc) {
        *asock = p->b2->bc->sock;
        if (p->b2->retiring) {
            if (!wsp_client_output_full(p)) {
                *aev |= APR_POLLIN;
                if (wsp_bconn_buffers_input(p->b2->bc)) {
                    WSP_SOONER(apr_time_now());
                }
            }
            if (p->b2->want_write) {
                *aev |= APR_POLLOUT;
            }
            if (!p->b2->close_sent) {
                WSP_SOONER(p->b2->last_rx + WSP_RETIRE_QUIET);
            }
        }
        else if (p->b2->bc->state != WSP_BC_OPEN) {
            *aev = wsp_bconn_handshake_events(p->b2->bc);
        }
        /* an open replacement waits for a message boundary, which only
         * the sockets bring: its handshake's deadline is over */
        if (p->b2->retiring || p->b2->bc->state != WSP_BC_OPEN) {
            WSP_SOONER(p->b2->deadline);
        }
    }
    else if (wsp_pipe_should_move(p)) {
        /* waiting for acknowledgements, the last one starts the move */
        WSP_SOONER(p->move_at && !wsp_move_due(p, 0) ? p->move_at
                                                     : apr_time_now());
    }
#undef WSP_SOONER
    want->wake_at = t;
}

/* Every pipe of the process allocates from one locked allocator: the
 * blocks a pipe frees serve the next pipes, instead of each idle pipe
 * keeping its own spare blocks. */
static apr_allocator_t *wsp_pipe_allocator;

#define WSP_ALLOC_MAX_FREE (4 * 1024 * 1024)

apr_status_t wsp_pipe_child_init(apr_pool_t *pchild)
{
    apr_thread_mutex_t *lock;
    apr_allocator_t *alloc;
    apr_status_t rv;

    if ((rv = apr_thread_mutex_create(&lock, APR_THREAD_MUTEX_DEFAULT,
                                      pchild)) != APR_SUCCESS
        || (rv = apr_allocator_create(&alloc)) != APR_SUCCESS) {
        return rv;
    }
    apr_allocator_mutex_set(alloc, lock);
    apr_allocator_max_free_set(alloc, WSP_ALLOC_MAX_FREE);
    wsp_pipe_allocator = alloc;
    return APR_SUCCESS;
}

apr_status_t wsp_pipe_create(wsp_pipe_t **out, request_rec *r,
                             const wsp_dir_conf_t *conf, const char *id)
{
    apr_allocator_t *alloc = wsp_pipe_allocator;
    apr_pool_t *pool;
    wsp_pipe_t *p;
    apr_status_t rv;

    /* An unmanaged pool: a pipe outlives the request that made it when a
     * newer connection takes it over. */
    if (!alloc) {
        return APR_ENOPOOL;          /* child_init did not run */
    }
    if ((rv = apr_pool_create_unmanaged_ex(&pool, NULL, alloc))
        != APR_SUCCESS) {
        return rv;
    }
    p = apr_pcalloc(pool, sizeof(*p));
    p->pool = pool;
    p->allocator = alloc;
    p->ba = apr_bucket_alloc_create_ex(alloc);
    p->s = r->server;
    p->id = apr_pstrdup(pool, id);
    p->client_ip = apr_pstrdup(pool, r->useragent_ip);
    /* a merged per-dir config lives in the request's pool */
    p->conf = apr_pmemdup(pool, conf, sizeof(*conf));
    wsp_conf_pool_opts(conf, &p->opts);
    p->state = WSP_ST_CONNECTING;
    p->rest = "";
    wsp_queue_init(&p->q, pool, p->ba);
    p->q.keep = conf->ack;
    apr_generate_random_bytes((unsigned char *)&p->rng, sizeof(p->rng));
    p->rng |= 1;
    p->hops[0].kind = p->hops[1].kind = WSP_HOP_BACKEND;
    p->b = &p->hops[0];
    p->b2 = &p->hops[1];
    p->b->in.msg = apr_brigade_create(pool, p->ba);
    if (conf->resume_window > 0 && conf->id_source != WSP_ID_GENERATE) {
        /* backend messages outlive client connections: they are built in
         * the pipe's memory, and the spare brigade of moves is its own.
         * A generated id is never sent again: no session could resume. */
        p->resumable = 1;
        wsp_retain_init(&p->rt, p->ba, conf->resume_buffer);
        p->rspare = apr_brigade_create(pool, p->ba);
    }
    p->deadline = apr_time_now() + conf->connect_timeout;
    *out = p;
    return APR_SUCCESS;
}

void wsp_pipe_attach(wsp_pipe_t *p, request_rec *r)
{
    wsp_hop_t *cl = apr_pcalloc(r->pool, sizeof(*cl));
    conn_rec *c = r->connection;
    ap_filter_t *f;

    cl->r = r;
    cl->c = c;
    if (c->master) {
        /* mod_http2's stream: the socket the core hands out is a dummy
         * shared by every stream; input is signalled on a pipe (the
         * handler made sure there is one) */
        apr_pollfd_t pfd;

        memset(&pfd, 0, sizeof(pfd));
        cl->h2 = 1;
        if (ap_get_pollfd_from_conn(c, &pfd, NULL) == APR_SUCCESS
            && pfd.desc_type == APR_POLL_FILE) {
            cl->signal = pfd.desc.f;
        }
    }
    else {
        cl->sock = ap_get_conn_socket(c);
        cl->plain = !ap_ssl_conn_is_ssl(c);
    }
    for (f = c->output_filters; f->next; f = f->next)
        ;
    cl->core_out = f;
    wsp_hop_init(&cl->in, WSP_FROM_CLIENT, wsp_conf_max_message(p->conf),
                 p->ba, apr_brigade_create(r->pool, p->ba), &p->rng);
    cl->ibb = apr_brigade_create(r->pool, c->bucket_alloc);
    cl->out = apr_brigade_create(r->pool, c->bucket_alloc);
    cl->tmp = apr_brigade_create(r->pool, c->bucket_alloc);
    p->client = cl;
    if (p->resumable) {
        return;                        /* backend frames are the pipe's */
    }
    cl->spare = apr_brigade_create(r->pool, c->bucket_alloc);
    /* backend frames now go to this connection (a former one cleaned up
     * its brigade when it let go) */
    p->b->in.msg = apr_brigade_create(r->pool, c->bucket_alloc);
    if (wsp_hop_mid_message(&p->b->in)) {
        p->b->in.drop = 1;             /* the rest of a half-sent message */
    }
    wsp_hop_drop(&p->b->in);
    p->b->in.ba = c->bucket_alloc;
}

void wsp_pipe_upgraded(wsp_pipe_t *p)
{
    wsp_hop_t *cl = p->client;

    cl->upgraded = 1;
    cl->last_rx = apr_time_now();
    /* the 101 may have left frames in the core's buffer */
    cl->more_input = 1;
}

/* The pipe goes to another driver: a backend handshake under way stays
 * with this thread (mod_ssl's runs on a coroutine of its stack) and is
 * ended, the next driver starts afresh. An open second backend (a
 * draining one still sending its last messages, or a replacement
 * waiting for a message boundary) goes along when its frames are the
 * pipe's (a resumable session); otherwise they are the old client's
 * memory, and it is let go. */
static void wsp_pipe_let_hops_go(wsp_pipe_t *p)
{
    if (p->b2->bc && (!p->resumable || p->b2->bc->state != WSP_BC_OPEN)) {
        if (p->b2->retiring) {
            WSP_LOG(p, APLOG_DEBUG, 0, "draining backend %s let go (the "
                    "pipe changes connections)", p->b2->be->url);
        }
        wsp_aux_end(p);
    }
    if (p->b->bc && p->b->bc->state != WSP_BC_OPEN) {
        wsp_bhop_end(p, p->b);
        p->retry_at = 0;
    }
}

void wsp_pipe_detach(wsp_pipe_t *p)
{
    wsp_hop_t *cl = p->client;
    unsigned char pl[WSP_CONTROL_MAX];
    apr_size_t n;

    if (!cl) {
        WSP_LOG(p, APLOG_DEBUG, 0, "a new connection resumes the session");
        wsp_pipe_let_hops_go(p);
        return;
    }
    WSP_LOG(p, APLOG_INFO, 0, "a newer connection takes the pipe over: "
            "closing this one with 1008");
    if (!cl->gone) {
        n = wsp_close_payload(pl, WSP_CLOSE_POLICY, "replaced", 8);
        apr_brigade_cleanup(cl->out);
        wsp_client_ctrl(p, WSP_OP_CLOSE, pl, n);
        cl->close_sent = 1;
        wsp_client_flush(p, apr_time_now());
    }
    wsp_pipe_let_hops_go(p);
    /* what this thread allocated stays with it */
    wsp_hop_drop(&cl->in);
    p->client = NULL;
    if (p->resumable) {
        return;                        /* backend frames are the pipe's */
    }
    if (wsp_hop_mid_message(&p->b->in)) {
        p->b->in.drop = 1;
    }
    wsp_hop_drop(&p->b->in);
    p->b->in.msg = NULL;
}

int wsp_pipe_handover_begin(wsp_pipe_t *p)
{
    return p->handover == WSP_HANDOVER_ASKED
           && ((p->client && p->client->upgraded) || wsp_pipe_detached(p))
           && !wsp_closing(p) && wsp_registry_begin_handover(p);
}

int wsp_pipe_handover_asked(const wsp_pipe_t *p)
{
    return p->handover == WSP_HANDOVER_ASKED;
}

void wsp_pipe_handover_end(wsp_pipe_t *p)
{
    wsp_registry_set_wake(p, NULL, NULL);
    wsp_pipe_detach(p);
    wsp_registry_handed_over(p);
}

void wsp_pipe_end(wsp_pipe_t *p)
{
    wsp_registry_set_wake(p, NULL, NULL);
    wsp_registry_remove(p);
    WSP_LOG(p, APLOG_DEBUG, 0, "pipe ended");
    wsp_pipe_destroy(p);
}

void wsp_pipe_destroy(wsp_pipe_t *p)
{
    if (wsp_pipe_detached(p)) {
        WSP_LOG(p, APLOG_INFO, 0, "detached session ends (%s)",
                wsp_pipe_state(p) == WSP_ST_DONE ? "closed" : "dropped");
        wsp_session_undetach(p, 0);
    }
    wsp_aux_end(p);
    wsp_bhop_end(p, p->b);
    if (p->client) {
        wsp_hop_drop(&p->client->in);
    }
    wsp_queue_clear(&p->q);
    if (p->resumable) {
        wsp_retain_clear(&p->rt);
        apr_brigade_cleanup(p->rspare);
    }
    apr_bucket_alloc_destroy(p->ba);
    apr_pool_destroy(p->pool);
}
