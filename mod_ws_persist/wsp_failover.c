/* Connecting and failing over: finding a usable backend, its handshake,
 * and the one place that decides what a backend's end means. */
#include "apr_strings.h"

#include "wsp_pipe_int.h"
#include "wsp_config.h"
#include "wsp_handshake.h"
#include "wsp_registry.h"

/* Every backend connection ends here, so the driver hears of its socket
 * first: the hop lets it go, gives its backend back to the pool and
 * forgets everything about it (its message brigade stays for the next). */
void wsp_bhop_end(wsp_pipe_t *p, wsp_hop_t *h)
{
    apr_bucket_brigade *msg = h->in.msg;

    if (h->bc) {
        if (p->on_bclose) {
            p->on_bclose(p->driver_baton, h->bc->sock);
        }
        wsp_bconn_close(h->bc);
    }
    if (h->be) {
        wsp_pool_release(p->conf->pool, h->be);
    }
    if (p->client || p->resumable) {
        wsp_hop_drop(&h->in);      /* its frames are the client's memory,
                                    * or the pipe's */
    }
    memset(h, 0, sizeof(*h));
    h->kind = WSP_HOP_BACKEND;
    h->in.msg = msg;
}

/* A backend hop's handshake, as far as the socket allows, within its
 * deadline. */
int wsp_bhop_handshake(wsp_hop_t *h, apr_time_t now, const char **why)
{
    int res = wsp_bconn_handshake(h->bc, why);

    if (res == WSP_HS_MORE && now >= h->deadline) {
        res = WSP_HS_FAIL;
        *why = "handshake timed out";
    }
    return res;
}

/* The backend connection is dropped without a failover (pipe ending). */
void wsp_backend_drop(wsp_pipe_t *p)
{
    wsp_bhop_end(p, p->b);
}

/* The current backend is interrupted: count the failure, keep what the
 * client sent for the next one and start looking for it. */
static void wsp_failover(wsp_pipe_t *p, apr_time_t now, const char *why)
{
    char kept[64] = "";

    if (p->q.kept_msgs) {
        apr_snprintf(kept, sizeof(kept), ", %" APR_SIZE_T_FMT " written "
                     "but not acknowledged", p->q.kept_msgs);
    }
    WSP_LOG(p, APLOG_WARNING, 0, "backend interrupted (%s); failing over "
            "with %" APR_SIZE_T_FMT " message(s), %" APR_OFF_T_FMT
            " byte(s) buffered%s", why, p->q.messages, p->q.bytes, kept);
    if (p->b->be) {
        wsp_pool_failed(p->conf->pool, &p->opts, p->b->be, now);
        wsp_pool_failover(p->b->be);
    }
    if (p->b2->bc && !p->b2->retiring) {
        wsp_aux_end(p);             /* the failover picks afresh */
    }
    wsp_backend_drop(p);
    wsp_queue_rewind(&p->q);
    p->quiesce_at = 0;
    wsp_transit(p, WSP_ST_FAILING_OVER, why);
    /* a slow backend filled the buffer under backpressure: keep that up
     * until the next backend has it, rather than 1013 at the next byte */
    p->full_at_outage = p->q.cost >= p->conf->buffer_limit;
    p->deadline = now + p->conf->connect_timeout;
    p->retry_at = 0;
}

/* The session is closing and the backend ended: a close frame is the
 * reply to ours (or crossed it) and is answered; any other end drops the
 * backend. A client that waits for our reply to its close gets it. */
static void wsp_backend_ended_closing(wsp_pipe_t *p, apr_time_t now,
                                      wsp_end_e how, int code,
                                      const char *reason, apr_size_t rlen,
                                      const char *why)
{
    unsigned char pl[WSP_CONTROL_MAX];
    wsp_hop_t *cl = p->client;

    if (how == WSP_END_CLOSE) {
        if (!p->b->close_sent) {
            wsp_backend_ctrl(p, WSP_OP_CLOSE, pl,
                             wsp_close_payload(pl, code, reason, rlen));
            p->b->close_sent = 1;
        }
        if (cl && cl->close_rcvd && !cl->close_sent) {
            wsp_client_close(p, now, code, reason, rlen);
        }
        return;
    }
    if (cl && cl->close_rcvd && !cl->close_sent) {
        wsp_client_close(p, now, cl->close_code, cl->close_reason,
                         strlen(cl->close_reason));
    }
    if (!p->b->close_sent || !p->b->close_rcvd) {
        WSP_LOG(p, APLOG_DEBUG, 0, "backend ended while closing (%s)", why);
    }
    wsp_backend_drop(p);
}

void wsp_backend_ended(wsp_pipe_t *p, apr_time_t now, wsp_end_e how,
                       int code, const char *reason, apr_size_t rlen,
                       const char *why)
{
    unsigned char pl[WSP_CONTROL_MAX];
    char r[4 * WSP_CONTROL_MAX + 1], line[sizeof(r) + 64];
    const char *text;

    if (how == WSP_END_CLOSE) {
        p->b->close_rcvd = 1;
    }
    if (wsp_closing(p)) {
        wsp_backend_ended_closing(p, now, how, code, reason, rlen, why);
        return;
    }
    switch (how) {
    case WSP_END_TOO_BIG:
        /* not an interruption: the next backend would be asked the same
         * and answer the same, and every one be counted failed in turn */
        text = wsp_close_text(WSP_CLOSE_TOO_BIG);
        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl,
                         WSP_CLOSE_TOO_BIG, text, strlen(text)));
        p->b->close_sent = 1;
        WSP_LOG(p, APLOG_INFO, 0, "backend message over %" APR_OFF_T_FMT
                " bytes: closing both hops with 1009",
                wsp_conf_max_message(p->conf));
        wsp_client_close(p, now, WSP_CLOSE_TOO_BIG,
                         "backend message too big", 23);
        /* its stream cannot be parsed past the frame: read no more */
        p->b->close_rcvd = 1;
        return;
    case WSP_END_CLOSE:
        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl,
                         wsp_close_payload(pl, code, reason, rlen));
        p->b->close_sent = 1;
        wsp_log_text(r, sizeof(r), reason, rlen);
        if (!wsp_conf_is_failover_code(p->conf, code)) {
            WSP_LOG(p, APLOG_DEBUG, 0, "backend closed with %d \"%s\": "
                    "session over", code, r);
            wsp_client_close(p, now, code, reason, rlen);
            return;
        }
        apr_snprintf(line, sizeof(line), "close %d \"%s\"", code, r);
        why = line;
        break;
    case WSP_END_PROTOCOL:
        text = wsp_close_text(code);
        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl, code,
                         text, strlen(text)));
        p->b->close_sent = 1;
        apr_snprintf(line, sizeof(line), "%s broke the protocol: %d (%s)",
                     why, code, text);
        why = line;
        break;
    default:
        break;
    }
    if (p->b->close_sent) {
        /* our close goes out first, if the socket takes it now; a flush
         * that finds the backend gone has failed over already */
        wsp_backend_flush(p, now);
        if (!p->b->bc) {
            return;
        }
    }
    wsp_failover(p, now, why);
}

/* The handshake request for the backend the pipe is connecting to. */
const char *wsp_backend_request(void *baton, apr_pool_t *tp,
                                const char *key)
{
    wsp_pipe_t *p = baton;
    wsp_backend_req_t req;
    apr_table_t *h = apr_table_copy(tp, p->fwd);

    apr_table_setn(h, "X-WS-Persist-Client-Id", p->id);
    apr_table_setn(h, "X-WS-Persist-Resume",
                   apr_itoa(tp, p->connections));
    /* the first message this connection is sent, unless it answers
     * X-WS-Persist-Received (WSPersistAck On; a move then waits for the
     * draining backend's acknowledgements before it connects) */
    apr_table_setn(h, "X-WS-Persist-Next", apr_psprintf(tp, "%"
                   APR_UINT64_T_FMT, wsp_queue_first(&p->q)));
    req.path = apr_pstrcat(tp, p->req_be->path, p->rest, NULL);
    req.host = p->req_be->hostport;
    req.key = key;
    req.protocol = p->connections ? p->protocol : p->offered;
    req.headers = h;
    return wsp_handshake_request(tp, &req);
}

/* How long one backend may take to complete a handshake: one hung
 * backend must not use up the whole connect timeout. */
apr_interval_time_t wsp_attempt_time(const wsp_pipe_t *p)
{
    apr_interval_time_t per = p->conf->connect_timeout / 3;

    return per < apr_time_from_sec(1) ? apr_time_from_sec(1) : per;
}

/* Start a handshake with the next usable backend, if any. */
static void wsp_connect_next(wsp_pipe_t *p, apr_time_t now)
{
    /* as every child sees the pool now: members come and go */
    int tries = wsp_pool_size(p->conf->pool);

    while (!p->b->bc && tries-- > 0) {
        apr_time_t next = 0;
        wsp_backend_t *be = wsp_pool_acquire(p->conf->pool, &p->opts, now,
                                             NULL, &next);
        apr_status_t rv;
        apr_interval_time_t per;

        if (!be) {
            p->retry_at = next ? next : now + WSP_BUSY_WAIT;
            if (p->retry_at > p->deadline) {
                p->retry_at = p->deadline;
            }
            return;
        }
        p->b->be = be;
        p->req_be = be;
        rv = wsp_bconn_open(&p->b->bc, p->pool, p->s, be, wsp_backend_request,
                            p,
                            p->connections ? p->protocol : p->offered,
                            p->connections && p->protocol);
        if (rv != APR_SUCCESS) {
            WSP_LOG(p, APLOG_WARNING, rv, "cannot connect");
            wsp_pool_failed(p->conf->pool, &p->opts, be, now);
            wsp_pool_release(p->conf->pool, be);
            p->b->be = NULL;
            continue;
        }
        per = wsp_attempt_time(p);
        p->b->deadline = now + per < p->deadline ? now + per
                                                      : p->deadline;
    }
}

void wsp_connected(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;

    wsp_pool_succeeded(p->conf->pool, p->b->be);
    if (!p->connections) {
        wsp_registry_pin(p, bc->protocol);
    }
    WSP_LOG(p, APLOG_DEBUG, 0, "connected (resume %d)", p->connections);
    p->connections++;
    wsp_hop_init(&p->b->in, WSP_FROM_SERVER, wsp_conf_max_message(p->conf),
                 p->resumable ? p->ba : p->client->c->bucket_alloc,
                 p->b->in.msg, &p->rng);
    p->b->last_rx = now;
    p->b->ping_sent = 0;
    p->b->ended = NULL;
    wsp_settle(p, p->b->be->url);
}

/* WSPersistAck: an X-WS-Persist-Received beyond what the client sent
 * is the backend's mistake: NULL, or why its handshake fails. */
const char *wsp_received_check(wsp_pipe_t *p, wsp_bconn_t *bc)
{
    if (!p->conf->ack || !bc->has_received || bc->received <= p->q.pushed) {
        return NULL;
    }
    return apr_psprintf(bc->pool, "X-WS-Persist-Received %" APR_UINT64_T_FMT
                        " beyond the %" APR_UINT64_T_FMT " message(s) the "
                        "client sent", bc->received, p->q.pushed);
}

/* WSPersistAck: the new current backend gets every message not
 * acknowledged again, from K+1 when it answered X-WS-Persist-Received: K
 * (it has processed 1..K, DESIGN 7). Returns 0, or -1 when the session
 * cannot keep its promise (K+1 was acknowledged before and is not kept):
 * it is closed with 1011. */
int wsp_resume_at(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;
    apr_uint64_t first;

    if (!p->conf->ack) {
        return 0;
    }
    wsp_queue_rewind(&p->q);
    first = wsp_queue_first(&p->q);
    if (!bc->has_received) {
        return 0;
    }
    if (wsp_queue_skip(&p->q, bc->received) < 0) {
        WSP_LOG(p, APLOG_ERR, 0, "backend has processed client messages "
                "1..%" APR_UINT64_T_FMT " only, but 1..%" APR_UINT64_T_FMT
                " were acknowledged and are not kept: closing with 1011",
                bc->received, first - 1);
        wsp_backend_drop(p);
        wsp_client_close(p, now, WSP_CLOSE_INTERNAL, "session state lost",
                         18);
        return -1;
    }
    WSP_LOG(p, APLOG_DEBUG, 0, "backend has processed client messages 1..%"
            APR_UINT64_T_FMT ": sending from %" APR_UINT64_T_FMT,
            bc->received, wsp_queue_next(&p->q));
    return 0;
}

int wsp_connect_step(wsp_pipe_t *p, apr_time_t now)
{
    const char *why = NULL;
    int res;

    if (!wsp_connecting(p)) {
        return 0;
    }
    if (!p->b->bc) {
        if (now < p->retry_at) {
            return 0;
        }
        wsp_connect_next(p, now);
        if (!p->b->bc) {
            return 0;
        }
    }
    res = wsp_bhop_handshake(p->b, now, &why);
    if (res == WSP_HS_MORE) {
        return 0;
    }
    if (res == WSP_HS_OK && (why = wsp_received_check(p, p->b->bc))) {
        res = WSP_HS_FAIL;
    }
    if (res == WSP_HS_OK) {
        if (wsp_resume_at(p, now) == 0) {
            wsp_connected(p, now);
        }
        return 1;
    }
    WSP_LOG(p, APLOG_WARNING, 0, "handshake failed: %s", why);
    wsp_pool_failed(p->conf->pool, &p->opts, p->b->be, now);
    wsp_bhop_end(p, p->b);
    p->retry_at = 0;
    return 1;
}

/* No backend in time: 503 at connect time, 1014 during a failover. */
void wsp_connect_timeout(wsp_pipe_t *p, apr_time_t now)
{
    if (!wsp_connecting(p) || now < p->deadline) {
        return;
    }
    wsp_backend_drop(p);
    if (p->state == WSP_ST_CONNECTING) {
        WSP_LOG(p, APLOG_ERR, 0, "no backend completed a handshake within "
                "%" APR_TIME_T_FMT " ms: answering 503",
                apr_time_as_msec(p->conf->connect_timeout));
        wsp_transit(p, WSP_ST_FAILED, "no backend in time");
        return;
    }
    WSP_LOG(p, APLOG_ERR, 0, "no backend within %" APR_TIME_T_FMT " ms: "
            "closing with 1014, %" APR_SIZE_T_FMT " buffered message(s) "
            "dropped", apr_time_as_msec(p->conf->connect_timeout),
            p->q.messages);
    wsp_client_close(p, now, WSP_CLOSE_BAD_GATEWAY, "no backend", 10);
}
