/* Hop I/O: frames in from the client and the current backend, messages
 * on to the other side, control frames answered, output written as far
 * as each socket takes it without waiting. */
#include "apr_atomic.h"
#include "apr_strings.h"
#include "util_filter.h"

#include "wsp_pipe_int.h"
#include "wsp_config.h"
#include "wsp_sock.h"

/* A control frame toward the backend, sent at the next frame boundary. */
void wsp_backend_ctrl(wsp_pipe_t *p, int opcode,
                      const unsigned char *payload, apr_size_t len)
{
    wsp_owe(&p->b->owed, opcode, payload, len);
}

/* A client that pings and does not read its pongs is not read until the
 * pong it is owed can join its output (DESIGN 8): what it asks for past
 * the allowance costs it its own input, not our CPU. */
int wsp_client_stalled(const wsp_hop_t *cl)
{
    return cl->owed.pong_due && cl->ctrl_out >= WSP_CTRL_ALLOWANCE;
}

/* Frames toward the client join its output at once (whole frames only
 * go there); its pongs wait in a slot, see wsp_client_flush. */
void wsp_client_ctrl(wsp_pipe_t *p, int opcode,
                     const unsigned char *payload, apr_size_t len)
{
    wsp_hop_t *cl = p->client;
    unsigned char *f;
    apr_size_t h;

    if (!cl || cl->gone || cl->close_sent) {
        return;
    }
    f = apr_bucket_alloc(len + WSP_FRAME_HDR_MAX, cl->c->bucket_alloc);
    h = wsp_frame_header(f, 1, opcode, len, NULL);
    memcpy(f + h, payload, len);
    APR_BRIGADE_INSERT_TAIL(cl->out, apr_bucket_heap_create(
        (const char *)f, h + len, apr_bucket_free, cl->c->bucket_alloc));
    cl->out_bytes += (apr_off_t)wsp_frame_cost(h + len);
    cl->ctrl_out += (apr_off_t)wsp_frame_cost(h + len);
    cl->out_total += (apr_off_t)(h + len);
}

/* A kept backend message joins the client's output as a copy in the
 * connection's memory (the record stays the pipe's): in pieces of at
 * most a pass, so that passing them cuts none. */
void wsp_client_give(wsp_pipe_t *p, wsp_rmsg_t *m)
{
    wsp_hop_t *cl = p->client;
    const char *d = wsp_rmsg_data(m);
    apr_size_t left = m->len;

    while (left > 0) {
        apr_size_t n = left < WSP_PASS_CHUNK ? left : WSP_PASS_CHUNK;

        APR_BRIGADE_INSERT_TAIL(cl->out, apr_bucket_heap_create(d, n, NULL,
                                cl->c->bucket_alloc));
        cl->out_bytes += (apr_off_t)wsp_frame_cost(n);
        d += n;
        left -= n;
    }
    cl->out_total += (apr_off_t)m->len;
    m->end = cl->out_total;
}

static void wsp_client_pong(wsp_pipe_t *p, int opcode,
                            const unsigned char *payload, apr_size_t len)
{
    if (p->client) {
        wsp_owe(&p->client->owed, opcode, payload, len);
    }
}

/* Pass frames to the client's filters without ever blocking: at most a
 * chunk the core writes or sets aside, and only when nothing is pending.
 * An HTTP/2 stream has no core filter: mod_http2 takes each flushed chunk
 * into its stream buffer, waiting (up to H2StreamTimeout) while that is
 * full; the wait holds only this pipe's own thread, its h2 worker. */
int wsp_client_flush(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *cl = p->client;
    conn_rec *c;
    apr_status_t rv;
    int progress = 0;

    if (!cl || cl->gone || !cl->upgraded) {
        return 0;
    }
    c = cl->c;
    for (;;) {
        if (c->data_in_output_filters && !cl->h2) {
            rv = cl->core_out->frec->filter_func.out_func(cl->core_out,
                                                          NULL);
            if (rv != APR_SUCCESS) {
                wsp_client_gone(p, now, "write failed", rv);
                return 1;
            }
            if (c->data_in_output_filters) {
                cl->want_write = 1;
                return progress;
            }
        }
        cl->want_write = 0;
        /* the core holds nothing: all that was passed is written */
        if (p->resumable) {
            wsp_retain_flushed(&p->rt, cl->out_passed);
        }
        if (APR_BRIGADE_EMPTY(cl->out)) {
            cl->ctrl_out = 0;
            cl->out_bytes = 0;        /* what cuts left of the count */
        }
        /* a pong joins the output while the control frames put there
         * since it last emptied stay within the allowance: toward a
         * client that does not read, one waits and newer ones replace it */
        if (cl->owed.pong_due && cl->ctrl_out < WSP_CTRL_ALLOWANCE) {
            cl->owed.pong_due = 0;
            wsp_client_ctrl(p, WSP_OP_PONG, cl->owed.pong,
                            cl->owed.pong_len);
        }
        if (APR_BRIGADE_EMPTY(cl->out)) {
            return progress;
        }
        {
            apr_bucket *e;

            apr_brigade_partition(cl->out, WSP_PASS_CHUNK, &e);
            while (APR_BRIGADE_FIRST(cl->out) != e) {
                apr_bucket *b = APR_BRIGADE_FIRST(cl->out);

                APR_BUCKET_REMOVE(b);
                APR_BRIGADE_INSERT_TAIL(cl->tmp, b);
                cl->out_bytes -= (apr_off_t)wsp_frame_cost(b->length);
                cl->out_passed += (apr_off_t)b->length;
            }
            if (cl->h2) {
                APR_BRIGADE_INSERT_TAIL(cl->tmp,
                    apr_bucket_flush_create(c->bucket_alloc));
            }
            rv = ap_pass_brigade(c->output_filters, cl->tmp);
            apr_brigade_cleanup(cl->tmp);
            if (rv != APR_SUCCESS) {
                wsp_client_gone(p, now, "write failed", rv);
                return 1;
            }
            progress = 1;
        }
        if (cl->h2) {
            continue;
        }
        /* the core only writes at once above its minimum: nudge it */
        rv = cl->core_out->frec->filter_func.out_func(cl->core_out, NULL);
        if (rv != APR_SUCCESS) {
            wsp_client_gone(p, now, "write failed", rv);
            return 1;
        }
    }
}

/* Write what the backend may take: control frames at frame boundaries,
 * then queued messages; a pending close once the queue is empty. */
int wsp_backend_flush(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;
    int progress = 0;

    p->b->want_write = 0;
    while (p->b->bc && bc->state == WSP_BC_OPEN && !p->b->ended
           && !p->b->write_failed) {
        struct iovec vec[WSP_IOV];
        apr_size_t n;
        apr_status_t rv;
        int nvec;

        if (p->b->ctrl_off == p->b->ctrl_len
            && wsp_queue_at_frame_boundary(&p->q)) {
            wsp_hop_next_ctrl(p->b, &p->rng);
        }
        if (p->b->ctrl_off < p->b->ctrl_len) {
            n = p->b->ctrl_len - p->b->ctrl_off;
            rv = wsp_bconn_send(bc, (char *)p->b->ctrl + p->b->ctrl_off, &n);
            p->b->ctrl_off += n;
            apr_atomic_add64(&p->b->be->st->bytes_out, n);
        }
        else if (p->q.bytes > 0 && !wsp_quiescing(p)
                 && (!p->b->close_sent
                     || !wsp_queue_at_frame_boundary(&p->q))) {
            /* A backend whose input was left unread (its client is
             * slow, a pong is owed, the budget ran out) may have sent its
             * FIN behind it: what is written after that is lost. The
             * kernel knows; the messages wait for the read that finds
             * the end, and one cut here is sent again whole. */
            if (p->b->unread && wsp_bconn_peer_closed(bc, 0)) {
                return progress;
            }
            nvec = wsp_queue_iov(&p->q, vec, WSP_IOV);
            rv = wsp_bconn_sendv(bc, vec, nvec, &n);
            wsp_queue_consumed(&p->q, n);
            apr_atomic_add64(&p->b->be->st->bytes_out, n);
        }
        else if (p->b->close_pending && !p->b->close_sent) {
            unsigned char pl[WSP_CONTROL_MAX];
            const char *r = p->b->close_pending_reason ? p->b->close_pending_reason : "";

            wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl,
                             p->b->close_pending, r, strlen(r)));
            p->b->close_sent = 1;
            continue;
        }
        else {
            return progress;
        }
        if (n > 0) {
            progress = 1;
        }
        if (APR_STATUS_IS_EAGAIN(rv)) {
            p->b->want_write = 1;
            return progress;
        }
        if (rv != APR_SUCCESS) {
            /* The connection was reset, but what the kernel holds of
             * what the backend sent whole is the client's (DESIGN 3):
             * nothing more is written, and the read that reaches the
             * reset ends the backend (after the old one while it
             * retires). A failure the reads would not see ends it now. */
            if (wsp_bconn_peer_closed(bc, 1)) {
                p->b->write_failed = 1;
                return 1;
            }
            wsp_backend_ended(p, now, WSP_END_IO, 0, NULL, 0, "write failed");
            return 1;
        }
    }
    return progress;
}

/* What both hops do with a control frame: a ping is answered on the hop
 * it came from, a pong ends the hop's ping wait, a close is parsed (who
 * may send which code, and a reason in UTF-8). Returns WSP_CTL_CLOSE
 * (code and reason set), the close code a bad close frame calls for
 * (1002, 1007), or 0. */
#define WSP_CTL_CLOSE      1

typedef void wsp_ctrl_fn(wsp_pipe_t *p, int opcode,
                         const unsigned char *payload, apr_size_t len);

static int wsp_control(wsp_pipe_t *p, const wsp_hop_in_t *in,
                       wsp_ctrl_fn *reply, apr_time_t *ping_sent, int *code,
                       const char **reason, apr_size_t *rlen)
{
    apr_size_t len = (apr_size_t)in->rd.hdr.len;

    switch (in->rd.hdr.opcode) {
    case WSP_OP_PING:
        reply(p, WSP_OP_PONG, in->cpay, len);
        break;
    case WSP_OP_PONG:
        *ping_sent = 0;
        break;
    case WSP_OP_CLOSE:
        {
            int bad = wsp_close_parse_from(in->rd.from, in->cpay, len, code,
                                           reason, rlen);

            return bad ? bad : WSP_CTL_CLOSE;
        }
    }
    return 0;
}

static void wsp_client_control(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *cl = p->client;
    const char *reason;
    apr_size_t rlen;
    int code;
    int res = wsp_control(p, &cl->in, wsp_client_pong, &cl->ping_sent,
                          &code, &reason, &rlen);

    apr_uint64_t k;

    if (res >= 1000) {
        wsp_client_violation(p, now, res);
        return;
    }
    /* a client that counts what it got frees the kept messages */
    if (p->resumable && cl->in.rd.hdr.opcode == WSP_OP_PONG
        && wsp_ack_parse(cl->in.cpay, (apr_size_t)cl->in.rd.hdr.len, &k)) {
        wsp_retain_ack(&p->rt, k);
    }
    switch (res) {
    case WSP_CTL_CLOSE:
        cl->close_rcvd = 1;
        cl->close_code = code;
        memcpy(cl->close_reason, reason, rlen);
        cl->close_reason[rlen] = '\0';
        if (cl->close_sent) {
            return;                 /* the reply to ours */
        }
        WSP_LOG(p, APLOG_DEBUG, 0, "client closed with %d", code);
        wsp_begin_ending(p, now, "the client closed");
        if (p->b->bc && p->b->bc->state == WSP_BC_OPEN && !p->b->close_sent) {
            p->b->close_pending = code == WSP_CLOSE_NO_STATUS
                                 ? WSP_CLOSE_NORMAL : code;
            p->b->close_pending_reason = cl->close_reason;
        }
        else {
            if (p->q.messages) {
                WSP_LOG(p, APLOG_INFO, 0, "client closed between backends; "
                        "%" APR_SIZE_T_FMT " buffered message(s) dropped",
                        p->q.messages);
            }
            wsp_backend_drop(p);
            wsp_client_close(p, now, code, reason, rlen);
        }
        break;
    }
}

/* Feed bytes from the client; returns 0, or 1 when reading must stop. */
#define WSP_FEED_ALL   0       /* all of it taken */
#define WSP_FEED_STOP  1       /* read no more: the client is done */
#define WSP_FEED_PAUSE 2       /* a pong is owed: the rest waits */

/* Feed bytes from the client; *used says how many were taken. A ping
 * pauses the feed until its pong is out, so that a client reading
 * nothing gets no more of its pings read than its pongs fill the
 * connection's buffers (DESIGN 8). */
static int wsp_client_feed(wsp_pipe_t *p, apr_time_t now,
                           const unsigned char *data, apr_size_t len,
                           apr_size_t *used)
{
    wsp_hop_t *cl = p->client;
    wsp_hop_in_t *in = &cl->in;
    apr_size_t all = len;

    while ((len > 0 || wsp_hop_pending(in)) && !cl->gone) {
        int ev = wsp_hop_step(in, &data, &len);

        if (ev >= 1000) {
            wsp_client_violation(p, now, ev);
            return 1;
        }
        switch (ev) {
        case WSP_EV_DATA:
            if (wsp_closing(p)) {
                in->drop = 1;        /* nothing after a close counts */
            }
            else if (!wsp_backpressure(p)
                     && p->q.cost + in->msg_bytes
                        + (apr_off_t)wsp_hop_total(in)
                        > p->conf->buffer_limit) {
                WSP_LOG(p, APLOG_ERR, 0, "buffer limit of %" APR_OFF_T_FMT
                        " bytes reached with no backend: closing with 1013",
                        p->conf->buffer_limit);
                wsp_client_close(p, now, WSP_CLOSE_TRY_AGAIN,
                                 "buffer full", 11);
                wsp_backend_drop(p);
                in->drop = 1;        /* its payload has nowhere to go */
                return 1;
            }
            break;
        case WSP_EV_MESSAGE:
            wsp_queue_push(&p->q, in->msg);
            in->msg_bytes = 0;
            break;
        case WSP_EV_CONTROL:
            wsp_client_control(p, now);
            if (cl->close_rcvd) {
                return WSP_FEED_STOP;
            }
            if (cl->owed.pong_due) {
                *used = all - len;
                return WSP_FEED_PAUSE;
            }
            break;
        }
    }
    *used = all - len;
    return WSP_FEED_ALL;
}

/* Feed what the client's brigade holds; a paused feed leaves the rest at
 * its head for the next run. */
static int wsp_client_feed_brigade(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *cl = p->client;

    while (!APR_BRIGADE_EMPTY(cl->ibb)) {
        apr_bucket *e = APR_BRIGADE_FIRST(cl->ibb);
        const char *d;
        apr_size_t n, used = 0;
        int res;

        if (APR_BUCKET_IS_EOS(e) && cl->h2) {
            /* mod_http2 ends the upgrade request's body with an EOS on
             * the first read; the stream's end shows as APR_EOF */
            apr_bucket_delete(e);
            continue;
        }
        if (APR_BUCKET_IS_EOS(e)) {
            wsp_client_gone(p, now, "connection closed", APR_EOF);
            apr_brigade_cleanup(cl->ibb);
            return WSP_FEED_STOP;
        }
        if (apr_bucket_read(e, &d, &n, APR_NONBLOCK_READ) != APR_SUCCESS
            || n == 0) {
            apr_bucket_delete(e);
            continue;
        }
        res = wsp_client_feed(p, now, (const unsigned char *)d, n, &used);
        if (res == WSP_FEED_STOP || cl->gone) {
            apr_brigade_cleanup(cl->ibb);
            return WSP_FEED_STOP;
        }
        if (used < n) {
            if (used > 0) {
                apr_bucket_split(e, used);
                apr_bucket_delete(e);
            }
            return WSP_FEED_PAUSE;
        }
        apr_bucket_delete(e);
        if (res == WSP_FEED_PAUSE) {
            return WSP_FEED_PAUSE;
        }
    }
    return WSP_FEED_ALL;
}

/* A plain client once the core holds none of its input: one recv into a
 * buffer of this thread's stack, fed at once. The core's own read would
 * try the socket again after a short read ("be greedy") and find EAGAIN:
 * a syscall in every round trip. What a paused feed leaves is kept in the
 * client's brigade, where the next run takes it first. */
#define WSP_DIRECT_CHUNK (16 * 1024)

static apr_status_t wsp_client_recv(wsp_pipe_t *p, apr_time_t now,
                                    apr_size_t want, apr_size_t *got,
                                    int *res)
{
    wsp_hop_t *cl = p->client;
    unsigned char buf[WSP_DIRECT_CHUNK];
    apr_size_t n = want < sizeof(buf) ? want : sizeof(buf), used = 0;
    apr_status_t rv = wsp_sock_recv(cl->sock, (char *)buf, &n);

    *got = 0;
    *res = WSP_FEED_ALL;
    if (rv == APR_SUCCESS && n == 0) {
        rv = APR_EOF;
    }
    if (rv != APR_SUCCESS) {
        return rv;
    }
    *got = n;
    *res = wsp_client_feed(p, now, buf, n, &used);
    if (*res == WSP_FEED_PAUSE && !cl->gone && used < n) {
        apr_bucket *e = apr_bucket_heap_create((const char *)buf + used,
                                               n - used, NULL,
                                               cl->c->bucket_alloc);

        APR_BRIGADE_INSERT_TAIL(cl->ibb, e);
    }
    return APR_SUCCESS;
}

int wsp_client_read(wsp_pipe_t *p, apr_time_t now, int ready)
{
    wsp_hop_t *cl = p->client;
    apr_size_t total = 0;
    int progress = 0;

    int drained_early;

    if (!cl || !cl->upgraded || cl->gone || cl->close_rcvd
        || (!ready && !cl->more_input)) {
        return 0;
    }
    /* On a plain connection the core holds nothing back: a read shorter
     * than its socket read leaves the rest in the kernel, where poll sees
     * it. mod_ssl may hold decrypted records, and right after the 101 the
     * core may hold pipelined bytes: read those until EAGAIN. */
    drained_early = cl->plain && !cl->more_input;
    cl->more_input = 0;
    while (total < WSP_READ_BUDGET) {
        apr_status_t rv;
        apr_bucket *e;
        apr_size_t got = 0;
        apr_off_t want = WSP_READ_CHUNK;
        int res;

        if (wsp_client_stalled(cl)) {
            cl->more_input = 1;      /* once its pong is out */
            return progress;
        }
        /* what a paused feed left goes first */
        if (APR_BRIGADE_EMPTY(cl->ibb)) {
            if (wsp_backpressure(p)) {
                apr_off_t room = p->conf->buffer_limit - p->q.cost;

                if (room <= 0) {
                    cl->more_input = 1;  /* the backend is slow: wait */
                    return progress;
                }
                if (room < want) {
                    /* no more than the limit (and the message in
                     * flight); the rest may wait in the core's buffer,
                     * so no early stop below */
                    want = room;
                    drained_early = 0;
                }
            }
            if (cl->direct) {
                rv = wsp_client_recv(p, now, (apr_size_t)want, &got, &res);
                if (APR_STATUS_IS_EAGAIN(rv)) {
                    return progress;
                }
                if (rv != APR_SUCCESS) {
                    wsp_client_gone(p, now, APR_STATUS_IS_EOF(rv)
                                    ? "connection closed" : "read failed",
                                    rv);
                    return 1;
                }
                total += got;
                cl->last_rx = now;
                cl->ping_sent = 0;
                progress = 1;
                if (res != WSP_FEED_ALL || cl->gone) {
                    if (res == WSP_FEED_PAUSE) {
                        cl->more_input = 1;
                    }
                    return 1;
                }
                if (got < (apr_size_t)want && got < WSP_DIRECT_CHUNK) {
                    return progress;  /* the kernel had no more */
                }
                continue;
            }
            rv = ap_get_brigade(cl->c->input_filters, cl->ibb,
                                AP_MODE_READBYTES, APR_NONBLOCK_READ, want);
            /* the core answers a non-blocking read with nothing to read
             * by an empty brigade, mod_ssl by EAGAIN */
            if (APR_STATUS_IS_EAGAIN(rv)
                || (rv == APR_SUCCESS && APR_BRIGADE_EMPTY(cl->ibb))) {
                cl->direct = cl->plain;   /* the core holds nothing */
                return progress;
            }
            if (rv != APR_SUCCESS) {
                wsp_client_gone(p, now, APR_STATUS_IS_EOF(rv) ? "connection "
                                "closed" : "read failed", rv);
                return 1;
            }
            for (e = APR_BRIGADE_FIRST(cl->ibb);
                 e != APR_BRIGADE_SENTINEL(cl->ibb); e = APR_BUCKET_NEXT(e)) {
                if (e->length != (apr_size_t)-1) {
                    got += e->length;
                }
            }
            total += got;
            cl->last_rx = now;
            cl->ping_sent = 0;
            /* the core's greedy read stopped short of want: it found the
             * socket empty and holds nothing more */
            cl->direct = cl->plain && got < (apr_size_t)want;
        }
        progress = 1;
        res = wsp_client_feed_brigade(p, now);
        if (res != WSP_FEED_ALL) {
            if (res == WSP_FEED_PAUSE) {
                cl->more_input = 1;
            }
            return 1;
        }
        if (drained_early && got < APR_BUCKET_BUFF_SIZE) {
            return progress;
        }
    }
    cl->more_input = 1;
    return progress;
}

/* A backend's acknowledgement pong frees the client messages it names
 * (WSPersistAck); the retiring backend of a move may send them too. */
void wsp_backend_acked(wsp_pipe_t *p, const wsp_hop_in_t *in)
{
    apr_uint64_t k;

    if (p->conf->ack && in->rd.hdr.opcode == WSP_OP_PONG
        && wsp_ack_parse(in->cpay, (apr_size_t)in->rd.hdr.len, &k)) {
        wsp_queue_ack(&p->q, k);
    }
}

static void wsp_backend_control(wsp_pipe_t *p, apr_time_t now)
{
    const char *reason;
    apr_size_t rlen;
    int code;
    int res = wsp_control(p, &p->b->in, wsp_backend_ctrl, &p->b->ping_sent,
                          &code, &reason, &rlen);

    wsp_backend_acked(p, &p->b->in);
    if (res >= 1000) {
        wsp_backend_ended(p, now, WSP_END_PROTOCOL, res, NULL, 0,
                          "its close frame");
    }
    else if (res == WSP_CTL_CLOSE) {
        wsp_backend_ended(p, now, WSP_END_CLOSE, code, reason, rlen, NULL);
    }
}

/* A data event from a backend hop: a frame is built for the client, a
 * whole message goes to its output. */
void wsp_backend_data(wsp_pipe_t *p, wsp_hop_in_t *in, int ev)
{
    wsp_hop_t *cl = p->client;

    if (p->resumable) {
        wsp_backend_kept(p, in, ev);
        return;
    }
    if (ev == WSP_EV_DATA) {
        if (!cl || cl->gone || cl->close_sent) {
            in->drop = 1;
        }
    }
    else if (ev == WSP_EV_MESSAGE) {
        APR_BRIGADE_CONCAT(cl->out, in->msg);
        cl->out_bytes += in->msg_bytes;
        in->msg_bytes = 0;
    }
}

/* Feed bytes from the backend; stops early when the backend is gone. */
static void wsp_backend_feed(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;
    wsp_hop_in_t *in = &p->b->in;

    while (p->b->bc == bc && (bc->ipos < bc->ilen || wsp_hop_pending(in))) {
        const unsigned char *d = bc->ibuf + bc->ipos;
        apr_size_t len = bc->ilen - bc->ipos;
        int ev = wsp_hop_step(in, &d, &len);

        bc->ipos = bc->ilen - len;
        if (ev >= 1000) {
            wsp_backend_ended(p, now, ev == WSP_CLOSE_TOO_BIG ? WSP_END_TOO_BIG
                              : WSP_END_PROTOCOL, ev, NULL, 0,
                              "its frames");
            return;
        }
        if (ev == WSP_EV_CONTROL) {
            wsp_backend_control(p, now);
            if (p->b->owed.pong_due) {
                break;               /* the rest after the pong is out */
            }
        }
        else {
            wsp_backend_data(p, in, ev);
        }
    }
}

/* While the old backend retires, the new one is read but not fed: its
 * replies must not overtake the old one's. What it sends waits in its
 * buffer, and the end of its connection waits too, but no more client
 * messages are written into it once that end is seen: they stay queued
 * for the next backend. */
int wsp_backend_hold(wsp_pipe_t *p, apr_time_t now, int ready)
{
    wsp_bconn_t *bc = p->b->bc;
    apr_size_t before;
    apr_status_t rv;

    if (bc->ilen - bc->ipos >= WSP_IBUF_SIZE) {
        p->b->unread = 1;             /* full: the rest waits, see flush */
        return 0;
    }
    if (!ready || p->b->ended) {
        return 0;
    }
    before = bc->ilen - bc->ipos;
    rv = wsp_bconn_fill(bc);
    if (APR_STATUS_IS_EAGAIN(rv)) {
        p->b->unread = 0;
        return 0;
    }
    if (rv != APR_SUCCESS) {
        p->b->ended = p->b->write_failed ? "write failed"
                      : APR_STATUS_IS_EOF(rv) ? "connection closed"
                                              : "read failed";
        return 1;
    }
    apr_atomic_add64(&p->b->be->st->bytes_in, bc->ilen - bc->ipos - before);
    p->b->last_rx = now;
    p->b->ping_sent = 0;
    return 1;
}

int wsp_backend_read(wsp_pipe_t *p, apr_time_t now, int ready)
{
    apr_size_t total = 0;
    int progress = 0, drained = 0;

    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN && wsp_retiring(p)) {
        return wsp_backend_hold(p, now, ready);
    }
    /* The socket is read only when poll said so: it is level-triggered, so
     * data left behind (budget, a full client) is reported again. */
    while (p->b->bc && p->b->bc->state == WSP_BC_OPEN && !p->b->close_rcvd
           && !p->b->owed.pong_due
           && !wsp_client_output_full(p)) {
        wsp_bconn_t *bc = p->b->bc;
        apr_size_t before;
        apr_status_t rv;

        if (bc->ipos < bc->ilen || wsp_hop_pending(&p->b->in)) {
            wsp_backend_feed(p, now);
            progress = 1;
            continue;
        }
        if (p->b->ended) {
            /* held until now */
            wsp_backend_ended(p, now, WSP_END_IO, 0, NULL, 0, p->b->ended);
            return 1;
        }
        if (!ready || total >= WSP_READ_BUDGET) {
            break;
        }
        bc->ipos = bc->ilen = 0;    /* all of it was fed above */
        before = 0;
        rv = wsp_bconn_fill(bc);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            p->b->unread = 0;
            return progress;
        }
        if (rv != APR_SUCCESS) {
            /* after a failed write the reset was reported there: the
             * read finds EOF, but the reset is the end */
            wsp_backend_ended(p, now, WSP_END_IO, 0, NULL, 0,
                              p->b->write_failed ? "write failed"
                              : APR_STATUS_IS_EOF(rv) ? "connection closed"
                                                      : "read failed");
            return 1;
        }
        total += bc->ilen - before;
        apr_atomic_add64(&p->b->be->st->bytes_in, bc->ilen - before);
        if (bc->ilen - before < WSP_IBUF_SIZE
            && !wsp_bconn_buffers_input(bc)) {
            ready = 0;              /* a short read drained the socket */
            drained = 1;
        }
        p->b->last_rx = now;
        p->b->ping_sent = 0;
        progress = 1;
    }
    /* what it sent may wait unread, a FIN behind it: see the flush */
    if (p->b->bc && (p->b->owed.pong_due || total >= WSP_READ_BUDGET
                     || wsp_client_output_full(p))) {
        p->b->unread = 1;
    }
    else if (drained) {
        p->b->unread = 0;
    }
    return progress;
}
