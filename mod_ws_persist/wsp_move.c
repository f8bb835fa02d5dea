/* Moving off a draining backend: the replacement connects beside it,
 * the two hops swap at a message boundary, and the old one retires: it
 * gets its 1001 once quiet while what it still sends is relayed. */
#include "apr_atomic.h"

#include "wsp_pipe_int.h"

int wsp_retiring(const wsp_pipe_t *p)
{
    return p->b2->bc && p->b2->retiring && !wsp_closing(p);
}

int wsp_pipe_should_move(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE && p->b->be && p->b->bc
           && p->b->bc->state == WSP_BC_OPEN && !p->b2->bc && p->client
           && p->client->upgraded && wsp_pool_leaving(p->b->be);
}

/* WSPersistAck: before a replacement connects, the draining backend is
 * written no new message and acknowledges what it has, so that the
 * replacement's X-WS-Persist-Received is where the session stands. */
int wsp_quiescing(const wsp_pipe_t *p)
{
    return p->quiesce_at && !wsp_closing(p)
           && wsp_queue_at_message_boundary(&p->q);
}

static int wsp_quiet(const wsp_pipe_t *p)
{
    return p->q.kept_msgs == 0 && wsp_queue_at_message_boundary(&p->q);
}

/* A move may begin: its time has come, or, waiting for acknowledgements,
 * they are all in. */
int wsp_move_due(const wsp_pipe_t *p, apr_time_t now)
{
    return wsp_pipe_should_move(p)
           && (now >= p->move_at || (p->quiesce_at && wsp_quiet(p)));
}

/* Where the message brigade a move swaps in waits: in the pipe when
 * backend messages are built in its memory, else in the client's. */
static apr_bucket_brigade **wsp_spare(wsp_pipe_t *p)
{
    if (p->resumable) {
        return &p->rspare;
    }
    return p->client ? &p->client->spare : NULL;
}

/* Let go of the second backend connection, whichever role it had. */
void wsp_aux_end(wsp_pipe_t *p)
{
    apr_bucket_brigade **spare = wsp_spare(p);

    if (p->state == WSP_ST_MOVING) {
        wsp_settle(p, "replacement let go");
    }
    wsp_bhop_end(p, p->b2);
    p->quiesce_at = 0;
    if (p->b2->in.msg && spare && !*spare) {
        *spare = p->b2->in.msg;             /* the next move's */
    }
    p->b2->in.msg = NULL;
}

/* Begin a handshake with a replacement for the draining backend. With
 * none usable the pipe stays where it is and asks again later. */
void wsp_move_start(wsp_pipe_t *p, apr_time_t now)
{
    apr_time_t next = 0;
    wsp_backend_t *be = wsp_pool_acquire(p->conf->pool, &p->opts, now,
                                         p->b->be, &next);
    apr_status_t rv;

    if (p->conf->ack && !wsp_quiet(p)) {
        if (!p->quiesce_at) {
            p->quiesce_at = now;
            p->move_at = now + WSP_ACK_WAIT;
            WSP_LOG(p, APLOG_DEBUG, 0, "backend draining: waiting for its "
                    "acknowledgement of %" APR_SIZE_T_FMT " message(s)",
                    p->q.kept_msgs);
            if (be) {
                wsp_pool_release(p->conf->pool, be);
            }
            return;
        }
        WSP_LOG(p, APLOG_INFO, 0, "backend draining: %" APR_SIZE_T_FMT
                " message(s) not acknowledged in time, sent again to the "
                "replacement", p->q.kept_msgs);
    }
    else if (p->conf->ack) {
        p->quiesce_at = p->quiesce_at ? p->quiesce_at : now;
    }
    p->move_at = now + WSP_MOVE_RETRY;
    if (!be) {
        WSP_LOG(p, APLOG_DEBUG, 0, "backend draining, no other usable yet");
        p->quiesce_at = 0;
        return;
    }
    p->req_be = be;
    rv = wsp_bconn_open(&p->b2->bc, p->pool, p->s, be, wsp_backend_request, p,
                        p->protocol, p->protocol != NULL);
    if (rv != APR_SUCCESS) {
        p->quiesce_at = 0;
        WSP_LOG(p, APLOG_WARNING, rv, "backend draining: cannot connect "
                "to %s", be->url);
        wsp_pool_failed(p->conf->pool, &p->opts, be, now);
        wsp_pool_release(p->conf->pool, be);
        return;
    }
    p->b2->be = be;
    p->b2->retiring = 0;
    p->b2->deadline = now + wsp_attempt_time(p);
    WSP_LOG(p, APLOG_INFO, 0, "backend draining: moving to %s", be->url);
    wsp_transit(p, WSP_ST_MOVING, be->url);
}

/* The replacement is open and nothing is half written to the draining
 * backend: swap them. New client messages go to the replacement; the old
 * backend gets a 1001 and its last messages reach the client before any
 * of the replacement's. */
int wsp_move_switch(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *old = p->b;
    wsp_bconn_t *old_bc = p->b->bc;
    apr_bucket_brigade **spare = wsp_spare(p);

    if (!p->b2->bc || p->b2->retiring || p->b2->bc->state != WSP_BC_OPEN
        || p->state != WSP_ST_MOVING || !old_bc
        || old_bc->state != WSP_BC_OPEN || !spare || !*spare
        || !wsp_queue_at_message_boundary(&p->q)
        || p->b->ctrl_off < p->b->ctrl_len || p->b->close_pending
        || p->b->close_sent || p->b->close_rcvd) {
        return 0;
    }
    /* the two hops swap: the old backend is the retiring second one */
    p->b = p->b2;
    p->b2 = old;
    p->b->in.msg = *spare;
    *spare = NULL;
    old->retiring = 1;
    old->deadline = now + WSP_RETIRE_CAP;
    old->last_rx = now;
    old->want_write = 0;
    p->quiesce_at = 0;
    if (wsp_resume_at(p, now) < 0) {
        return 1;
    }
    wsp_connected(p, now);
    WSP_LOG(p, APLOG_INFO, 0, "moved off draining backend %s with %"
            APR_SIZE_T_FMT " message(s) still to send", old->be->url,
            p->q.messages);
    return 1;
}

/* The replacement's handshake; the switch waits for a message boundary.
 * A failed one leaves the pipe where it is, to try again later. */
static int wsp_move_handshake(wsp_pipe_t *p, apr_time_t now)
{
    const char *why = NULL;
    int res;

    if (p->b2->bc->state == WSP_BC_OPEN) {
        return 0;
    }
    res = wsp_bhop_handshake(p->b2, now, &why);
    if (res == WSP_HS_MORE) {
        return 0;
    }
    if (res == WSP_HS_OK && (why = wsp_received_check(p, p->b2->bc))) {
        res = WSP_HS_FAIL;
    }
    if (res == WSP_HS_OK) {
        return 1;
    }
    WSP_LOG(p, APLOG_WARNING, 0, "backend draining: replacement %s failed "
            "(%s); staying for now", p->b2->be->url, why);
    wsp_pool_failed(p->conf->pool, &p->opts, p->b2->be, now);
    wsp_aux_end(p);
    p->move_at = now + WSP_MOVE_RETRY;
    return 1;
}

/* Frames from the retiring backend: data to the client, its close reply
 * ends it. Returns 1 when it is done. */
static int wsp_retire_feed(wsp_pipe_t *p)
{
    wsp_bconn_t *bc = p->b2->bc;
    wsp_hop_in_t *in = &p->b2->in;

    while (bc->ipos < bc->ilen || wsp_hop_pending(in)) {
        const unsigned char *d = bc->ibuf + bc->ipos;
        apr_size_t len = bc->ilen - bc->ipos;
        int ev = wsp_hop_step(in, &d, &len);

        bc->ipos = bc->ilen - len;
        if (ev >= 1000) {
            return 1;                /* it is leaving anyway */
        }
        if (ev != WSP_EV_CONTROL) {
            wsp_backend_data(p, in, ev);
        }
        else if (in->rd.hdr.opcode == WSP_OP_CLOSE) {
            return 1;
        }
        else {                       /* pings go unanswered: it is closing */
            wsp_backend_acked(p, in);
        }
    }
    return 0;
}

/* The retiring backend's 1001, once it is quiet (or at the cap). */
static void wsp_retire_close(wsp_pipe_t *p, apr_time_t now)
{
    unsigned char pl[WSP_CONTROL_MAX];

    if (p->b2->close_sent || (now < p->b2->last_rx + WSP_RETIRE_QUIET
                            && now < p->b2->deadline)) {
        return;
    }
    wsp_owe(&p->b2->owed, WSP_OP_CLOSE, pl, wsp_close_payload(pl,
            WSP_CLOSE_GOING_AWAY, "backend draining", 16));
    p->b2->close_sent = 1;
    p->b2->deadline = now + WSP_CLOSE_WAIT;
}

static int wsp_retire_step(wsp_pipe_t *p, apr_time_t now, int ready)
{
    wsp_bconn_t *bc = p->b2->bc;
    const char *done = NULL;
    apr_status_t rv;
    int progress = 0;

    wsp_retire_close(p, now);
    p->b2->want_write = 0;
    while (p->b2->ctrl_off < p->b2->ctrl_len
           || wsp_hop_next_ctrl(p->b2, &p->rng)) {
        apr_size_t n = p->b2->ctrl_len - p->b2->ctrl_off;

        rv = wsp_bconn_send(bc, (char *)p->b2->ctrl + p->b2->ctrl_off, &n);
        p->b2->ctrl_off += n;
        if (APR_STATUS_IS_EAGAIN(rv)) {
            p->b2->want_write = 1;
            break;
        }
        if (rv != APR_SUCCESS) {
            done = "write failed";
            break;
        }
        progress = 1;
    }
    while (!done) {
        if (wsp_retire_feed(p)) {
            done = "closed";
            break;
        }
        if (!ready || wsp_client_output_full(p)) {
            break;
        }
        bc->ipos = bc->ilen = 0;
        rv = wsp_bconn_fill(bc);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            break;
        }
        if (rv != APR_SUCCESS) {
            done = "connection ended";
            break;
        }
        apr_atomic_add64(&p->b2->be->st->bytes_in, bc->ilen);
        p->b2->last_rx = now;
        if (bc->ilen < WSP_IBUF_SIZE && !wsp_bconn_buffers_input(bc)) {
            ready = 0;
        }
        progress = 1;
    }
    if (!done && p->b2->close_sent && now >= p->b2->deadline) {
        done = "no close reply in time";
    }
    if (done) {
        WSP_LOG(p, APLOG_DEBUG, 0, "draining backend %s let go (%s)",
                p->b2->be->url, done);
        wsp_aux_end(p);
        return 1;
    }
    return progress;
}

int wsp_aux_step(wsp_pipe_t *p, apr_time_t now, int ready)
{
    if (!p->b2->bc) {
        return 0;
    }
    return p->b2->retiring ? wsp_retire_step(p, now, ready)
                           : wsp_move_handshake(p, now);
}
