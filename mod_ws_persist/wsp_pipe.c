/* The pipe state machine: frames in from both hops, the buffer toward the
 * backend, failover, pings and the closing handshakes. Nothing here
 * blocks; drivers (wsp_loop.c) poll what wsp_pipe_want() asks for. */
#include "httpd.h"
#include "apr_atomic.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_ssl.h"
#include "util_filter.h"

#include "wsp_pipe.h"
#include "wsp_config.h"
#include "wsp_handshake.h"
#include "wsp_registry.h"

#define WSP_READ_CHUNK   (64 * 1024)
#define WSP_READ_BUDGET  (512 * 1024)    /* per hop per run, for fairness */
#define WSP_PASS_CHUNK   (32 * 1024)     /* below the core's flush limit */
#define WSP_OUT_HIGH     (256 * 1024)    /* stop reading the backend */
#define WSP_CTRL_ALLOWANCE 2048          /* control bytes toward a client
                                          * between two empty outputs */
#define WSP_CLOSE_WAIT   apr_time_from_sec(5)
#define WSP_BUSY_WAIT    apr_time_from_msec(50)
#define WSP_IOV          64
#define WSP_MOVE_RETRY   apr_time_from_sec(1)
/* A backend may answer a close before the replies to the messages that
 * came just before it (python's websockets does): the retiring backend
 * gets its 1001 once it has been quiet this long, or after the cap. */
#define WSP_RETIRE_QUIET apr_time_from_msec(250)
#define WSP_RETIRE_CAP   apr_time_from_sec(2)

/* Events of the hop reader. */
#define WSP_EV_NONE     0      /* input used up */
#define WSP_EV_DATA     1      /* a data frame header: decide, then fill */
#define WSP_EV_FRAME    2      /* a data frame done, its message is not */
#define WSP_EV_MESSAGE  3      /* in->msg holds a whole message */
#define WSP_EV_CONTROL  4      /* a control frame in in->cpay */

static void wsp_backend_lost(wsp_pipe_t *p, apr_time_t now, const char *why);
static int wsp_retiring(const wsp_pipe_t *p);
static void wsp_aux_end(wsp_pipe_t *p);
static void wsp_hop_drop(wsp_hop_in_t *in);

/* Every backend connection ends here, so the driver hears of its socket
 * first: the hop lets it go, gives its backend back to the pool and
 * forgets everything about it (its message brigade stays for the next). */
static void wsp_bhop_end(wsp_pipe_t *p, wsp_hop_t *h)
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
    if (p->client) {
        wsp_hop_drop(&h->in);      /* its frames are the client's memory */
    }
    memset(h, 0, sizeof(*h));
    h->kind = WSP_HOP_BACKEND;
    h->in.msg = msg;
}
static void wsp_client_close(wsp_pipe_t *p, apr_time_t now, int code,
                             const char *reason, apr_size_t rlen);
static void wsp_begin_ending(wsp_pipe_t *p, apr_time_t now,
                             const char *why);

const char *wsp_pipe_backend_url(const wsp_pipe_t *p)
{
    return p->b->be ? p->b->be->url : "-";
}

/* xorshift64*: mask keys need to be unpredictable to a peer, not secret,
 * and a syscall per frame would cost more than the frame. */
static void wsp_rng_key(wsp_pipe_t *p, unsigned char key[4])
{
    apr_uint64_t x = p->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    x *= APR_UINT64_C(2685821657736338717);
    memcpy(key, &x, 4);
}

/* ---- the state ------------------------------------------------------- */

static const char *const wsp_state_names[] = {
    "connecting", "live", "failing-over", "moving", "closing", "done",
    "failed"
};

/* Every change of state goes through here, and is logged. */
static void wsp_transit(wsp_pipe_t *p, wsp_state_e to, const char *why)
{
    if (p->state == to) {
        return;
    }
    WSP_LOG(p, APLOG_TRACE1, 0, "state %s -> %s (%s)",
            wsp_state_names[p->state], wsp_state_names[to], why);
    p->state = to;
}

static int wsp_closing(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_CLOSING || p->state == WSP_ST_DONE;
}

static int wsp_relaying(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE || p->state == WSP_ST_MOVING;
}

static int wsp_connecting(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_CONNECTING || p->state == WSP_ST_FAILING_OVER;
}

wsp_state_e wsp_pipe_state(const wsp_pipe_t *p)
{
    return p->state;
}

int wsp_pipe_upgrade_due(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE && !p->client->upgraded;
}

int wsp_pipe_open(const wsp_pipe_t *p)
{
    return !wsp_closing(p) && p->state != WSP_ST_FAILED && p->client
           && p->client->upgraded;
}

/* ---- one hop's incoming frames ---------------------------------------- */

/* Payload room of a built frame: with its header room it fills one block
 * of the bucket allocator. */
#define WSP_CHUNK (APR_BUCKET_BUFF_SIZE - WSP_FRAME_HDR_MAX)
/* Header bytes a message may carry beyond its payload before its wire
 * size passes the message cap: a few hundred fragments' worth. */
#define WSP_FRAG_SLACK 4096

static void wsp_hop_init(wsp_hop_in_t *in, wsp_from_e from, apr_off_t max,
                         apr_bucket_alloc_t *ba, apr_bucket_brigade *msg)
{
    memset(in, 0, sizeof(*in));
    wsp_reader_init(&in->rd, from, (apr_uint64_t)max);
    in->ba = ba;
    in->remask = from == WSP_FROM_CLIENT;
    in->msg = msg;
    in->wire_max = max > 0 ? max + WSP_FRAG_SLACK : 0;
}

/* Forget a half-built message (its memory goes back). */
static void wsp_hop_drop(wsp_hop_in_t *in)
{
    if (in->chunk) {
        apr_bucket_free(in->chunk);
        in->chunk = NULL;
    }
    if (in->msg) {
        apr_brigade_cleanup(in->msg);
    }
    in->msg_bytes = 0;
    in->msg_wire = 0;
    in->emitted = 0;
}

/* Whether a data message is partly read: its rest is to be dropped when
 * the hop's reader changes hands. */
static int wsp_hop_mid_message(const wsp_hop_in_t *in)
{
    return in->rd.msg_opcode || in->emitted || in->chunk
           || (in->in_payload && !WSP_OP_IS_CONTROL(in->rd.hdr.opcode));
}

/* More to do without input: a frame whose payload is all there. */
static int wsp_hop_pending(const wsp_hop_in_t *in)
{
    return in->in_payload && in->rd.remaining == 0;
}

static apr_size_t wsp_hop_hdr_len(apr_uint64_t len, int masked)
{
    return 2 + (len > 125 ? 2 : 0) + (len > 65535 ? 6 : 0)
           + (masked ? 4 : 0);
}

/* What the current frame would be as one of ours. */
static apr_size_t wsp_hop_total(const wsp_hop_in_t *in)
{
    const wsp_frame_hdr_t *h = &in->rd.hdr;

    return (apr_size_t)h->len + wsp_hop_hdr_len(h->len, in->remask);
}

/* A frame to copy payload into, once payload arrives: as large as the
 * bytes of this frame at hand (never what its header claims), at least a
 * block so that small fragments share one, and just its size for a short
 * message in one frame. */
static void wsp_hop_chunk(wsp_pipe_t *p, wsp_hop_in_t *in, apr_size_t avail)
{
    apr_size_t here = in->rd.remaining < avail ? (apr_size_t)in->rd.remaining
                                               : avail;
    apr_size_t cap = here > WSP_CHUNK ? here : WSP_CHUNK;

    if (in->rd.hdr.fin && !in->emitted && in->rd.remaining < cap) {
        cap = (apr_size_t)in->rd.remaining;
    }
    in->chunk = apr_bucket_alloc(WSP_FRAME_HDR_MAX + cap, in->ba);
    in->chunk_cap = cap;
    in->chunk_len = 0;
    if (in->remask) {
        wsp_rng_key(p, in->key);
    }
}

/* The frame being filled is done: its header goes in front of its
 * payload and it joins the message. A frame filled far below its room is
 * copied into one of its size, so that what a message holds is what it
 * is charged. */
static void wsp_hop_emit(wsp_pipe_t *p, wsp_hop_in_t *in, int fin)
{
    unsigned char hdr[WSP_FRAME_HDR_MAX];
    unsigned char *f = in->chunk;
    apr_size_t len = in->chunk_len, hl, off;
    apr_bucket *b;

    if (!f) {                     /* an empty last frame */
        len = 0;
        in->chunk_cap = 0;
        f = apr_bucket_alloc(WSP_FRAME_HDR_MAX, in->ba);
        if (in->remask) {
            wsp_rng_key(p, in->key);
        }
    }
    hl = wsp_frame_header(hdr, fin, in->emitted ? WSP_OP_CONT : in->msg_op,
                          len, in->remask ? in->key : NULL);
    if (hl + len <= 112 && in->chunk_cap > 112) {
        /* a tiny frame fits a small node: not a block for it */
        unsigned char *g = apr_bucket_alloc(hl + len, in->ba);

        memcpy(g, hdr, hl);
        memcpy(g + hl, f + WSP_FRAME_HDR_MAX, len);
        apr_bucket_free(f);
        b = apr_bucket_heap_create((const char *)g, hl + len,
                                   apr_bucket_free, in->ba);
    }
    else {
        off = WSP_FRAME_HDR_MAX - hl;
        memcpy(f + off, hdr, hl);
        b = apr_bucket_heap_create((const char *)f, off + hl + len,
                                   apr_bucket_free, in->ba);
        b->start = off;
        b->length = hl + len;
    }
    APR_BRIGADE_INSERT_TAIL(in->msg, b);
    in->msg_bytes += (apr_off_t)wsp_frame_cost(hl + len);
    in->emitted = 1;
    in->chunk = NULL;
    in->chunk_len = in->chunk_cap = 0;
}

static int wsp_hop_frame_done(wsp_pipe_t *p, wsp_hop_in_t *in)
{
    int fin = in->rd.hdr.fin;

    in->in_payload = 0;
    if (WSP_OP_IS_CONTROL(in->rd.hdr.opcode)) {
        return WSP_EV_CONTROL;
    }
    if (fin) {
        in->msg_wire = 0;
    }
    if (in->drop) {
        if (fin) {
            in->drop = 0;
        }
        return WSP_EV_FRAME;
    }
    if (!fin) {
        return WSP_EV_FRAME;
    }
    wsp_hop_emit(p, in, 1);
    in->emitted = 0;
    return WSP_EV_MESSAGE;
}

/* Copy payload of the current data frame into the frame being built. */
static apr_size_t wsp_hop_fill(wsp_pipe_t *p, wsp_hop_in_t *in,
                               const unsigned char *data, apr_size_t len)
{
    unsigned char k[4], *key = NULL;
    apr_size_t want;

    if (in->chunk && in->chunk_len == in->chunk_cap) {
        wsp_hop_emit(p, in, 0);
    }
    if (!in->chunk) {
        wsp_hop_chunk(p, in, len);
    }
    want = in->chunk_cap - in->chunk_len;
    want = want < len ? want : len;
    if (in->remask) {
        /* the reader masks at the frame's offset, ours runs at the
         * built frame's: rotate the key to match */
        apr_size_t d = (in->chunk_len % 4 + 4
                        - (apr_size_t)(in->rd.offset % 4)) % 4;
        int i;

        for (i = 0; i < 4; i++) {
            k[i] = in->key[(i + d) % 4];
        }
        key = k;
    }
    want = wsp_reader_payload(&in->rd, in->chunk + WSP_FRAME_HDR_MAX
                              + in->chunk_len, data, want, key);
    in->chunk_len += want;
    return want;
}

/* Consume input up to the next event; returns it, or a close code (>= 1000)
 * when the peer broke the protocol or a cap. */
static int wsp_hop_step(wsp_pipe_t *p, wsp_hop_in_t *in,
                        const unsigned char **data, apr_size_t *len)
{
    const wsp_frame_hdr_t *h = &in->rd.hdr;
    apr_size_t used, n;

    if (!in->in_payload) {
        int res = wsp_reader_header(&in->rd, *data, *len, &used);

        *data += used;
        *len -= used;
        if (res != WSP_READ_FRAME) {
            return res;          /* WSP_EV_NONE or a close code */
        }
        in->in_payload = 1;
        if (WSP_OP_IS_CONTROL(h->opcode)) {
            return h->len == 0 ? wsp_hop_frame_done(p, in)
                               : wsp_hop_step(p, in, data, len);
        }
        if (h->opcode != WSP_OP_CONT) {
            in->msg_op = h->opcode;
        }
        in->msg_wire += (apr_off_t)(h->len + wsp_hop_hdr_len(h->len,
                                                             h->masked));
        if (in->wire_max && in->msg_wire > in->wire_max) {
            return WSP_CLOSE_TOO_BIG;
        }
        return WSP_EV_DATA;
    }
    while (*len > 0 && in->rd.remaining > 0) {
        unsigned char scratch[512];

        if (WSP_OP_IS_CONTROL(h->opcode)) {
            n = wsp_reader_payload(&in->rd, in->cpay + in->rd.offset, *data,
                                   *len, NULL);
        }
        else if (in->drop) {
            n = wsp_reader_payload(&in->rd, scratch, *data,
                                   *len < sizeof(scratch) ? *len
                                                          : sizeof(scratch),
                                   NULL);
        }
        else {
            n = wsp_hop_fill(p, in, *data, *len);
        }
        *data += n;
        *len -= n;
    }
    if (in->rd.remaining == 0) {
        return wsp_hop_frame_done(p, in);
    }
    return WSP_EV_NONE;
}

/* While a backend takes the buffer (or will take what a slow one left), a
 * full buffer stops reading the client; in an outage that began with room
 * to spare, the cap closes the client with 1013 instead. */
static int wsp_backpressure(const wsp_pipe_t *p)
{
    return wsp_relaying(p)
           || (p->state == WSP_ST_FAILING_OVER && p->full_at_outage);
}

/* ---- output ------------------------------------------------------------ */

/* A control frame owed to a peer: kept in its slot until it can go. */
static void wsp_owe(wsp_owed_t *o, int opcode, const unsigned char *payload,
                    apr_size_t len)
{
    if (o->close_due || o->close_out) {
        return;                      /* nothing follows a close */
    }
    switch (opcode) {
    case WSP_OP_PONG:
        memcpy(o->pong, payload, len);
        o->pong_len = len;
        o->pong_due = 1;
        break;
    case WSP_OP_PING:
        o->ping_due = 1;
        break;
    case WSP_OP_CLOSE:
        memcpy(o->close, payload, len);
        o->close_len = len;
        o->close_due = 1;
        break;
    }
}

/* The next owed frame toward the backend, encoded into p->b->ctrl (called at
 * a frame boundary with nothing in p->b->ctrl). Returns 0 when none. */
static int wsp_backend_next_ctrl(wsp_pipe_t *p)
{
    static const unsigned char beat[] = "wsp";
    wsp_owed_t *o = &p->b->owed;
    const unsigned char *pl;
    unsigned char key[4];
    apr_size_t len, h;
    int op;

    if (o->pong_due) {
        op = WSP_OP_PONG, pl = o->pong, len = o->pong_len, o->pong_due = 0;
    }
    else if (o->ping_due) {
        op = WSP_OP_PING, pl = beat, len = 3, o->ping_due = 0;
    }
    else if (o->close_due) {
        op = WSP_OP_CLOSE, pl = o->close, len = o->close_len;
        o->close_due = 0;
        o->close_out = 1;
    }
    else {
        return 0;
    }
    wsp_rng_key(p, key);
    h = wsp_frame_header(p->b->ctrl, 1, op, len, key);
    wsp_mask(p->b->ctrl + h, pl, len, key, 0);
    p->b->ctrl_len = h + len;
    p->b->ctrl_off = 0;
    return 1;
}

/* A control frame toward the backend, sent at the next frame boundary. */
static void wsp_backend_ctrl(wsp_pipe_t *p, int opcode,
                             const unsigned char *payload, apr_size_t len)
{
    wsp_owe(&p->b->owed, opcode, payload, len);
}

/* Forget what was owed to a backend connection that is gone. */
static void wsp_backend_ctrl_reset(wsp_pipe_t *p)
{
    p->b->ctrl_len = p->b->ctrl_off = 0;
    memset(&p->b->owed, 0, sizeof(p->b->owed));
}

/* Frames toward the client join its output at once (whole frames only
 * go there); its pongs wait in a slot, see wsp_client_flush. */
static void wsp_client_ctrl(wsp_pipe_t *p, int opcode,
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
}

static void wsp_client_pong(wsp_pipe_t *p, int opcode,
                            const unsigned char *payload, apr_size_t len)
{
    if (p->client) {
        wsp_owe(&p->client->owed, opcode, payload, len);
    }
}

static void wsp_client_gone(wsp_pipe_t *p, apr_time_t now, const char *why,
                            apr_status_t rv)
{
    wsp_hop_t *cl = p->client;

    if (cl->gone) {
        return;
    }
    cl->gone = 1;
    apr_brigade_cleanup(cl->out);
    cl->out_bytes = 0;
    if (wsp_closing(p)) {
        return;
    }
    WSP_LOG(p, APLOG_INFO, rv, "client went away (%s)", why);
    wsp_begin_ending(p, now, "client went away");
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN) {
        p->b->close_pending = WSP_CLOSE_GOING_AWAY;
        p->b->close_pending_reason = "client went away";
    }
}

/* Pass frames to the client's filters without ever blocking: at most a
 * chunk the core writes or sets aside, and only when nothing is pending. */
static int wsp_client_flush(wsp_pipe_t *p, apr_time_t now)
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
        if (c->data_in_output_filters) {
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
        if (APR_BRIGADE_EMPTY(cl->out)) {
            cl->ctrl_out = 0;
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
            }
            rv = ap_pass_brigade(c->output_filters, cl->tmp);
            apr_brigade_cleanup(cl->tmp);
            if (rv != APR_SUCCESS) {
                wsp_client_gone(p, now, "write failed", rv);
                return 1;
            }
            progress = 1;
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
static int wsp_backend_flush(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;
    int progress = 0;

    p->b->want_write = 0;
    while (p->b->bc && bc->state == WSP_BC_OPEN && !p->b->ended) {
        struct iovec vec[WSP_IOV];
        apr_size_t n;
        apr_status_t rv;
        int nvec;

        if (p->b->ctrl_off == p->b->ctrl_len
            && wsp_queue_at_frame_boundary(&p->q)) {
            wsp_backend_next_ctrl(p);
        }
        if (p->b->ctrl_off < p->b->ctrl_len) {
            n = p->b->ctrl_len - p->b->ctrl_off;
            rv = wsp_bconn_send(bc, (char *)p->b->ctrl + p->b->ctrl_off, &n);
            p->b->ctrl_off += n;
            apr_atomic_add64(&p->b->be->st->bytes_out, n);
        }
        else if (p->q.bytes > 0 && (!p->b->close_sent
                                    || !wsp_queue_at_frame_boundary(&p->q))) {
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
            wsp_backend_lost(p, now, "write failed");
            return 1;
        }
    }
    return progress;
}

/* ---- closing ----------------------------------------------------------- */

static void wsp_begin_ending(wsp_pipe_t *p, apr_time_t now, const char *why)
{
    if (!wsp_closing(p)) {
        wsp_transit(p, WSP_ST_CLOSING, why);
        p->close_deadline = now + WSP_CLOSE_WAIT;
    }
}

/* Send the client a close frame; the pipe is ending. */
static void wsp_client_close(wsp_pipe_t *p, apr_time_t now, int code,
                             const char *reason, apr_size_t rlen)
{
    wsp_hop_t *cl = p->client;
    unsigned char pl[WSP_CONTROL_MAX];

    if (!wsp_closing(p)) {
        char why[48];

        apr_snprintf(why, sizeof(why), "closing the client with %d", code);
        wsp_begin_ending(p, now, why);
    }
    if (!cl || cl->gone || cl->close_sent) {
        return;
    }
    wsp_client_ctrl(p, WSP_OP_CLOSE, pl,
                    wsp_close_payload(pl, code, reason, rlen));
    cl->close_sent = 1;
}

/* The backend connection is dropped without a failover (pipe ending). */
static void wsp_backend_drop(wsp_pipe_t *p)
{
    wsp_bhop_end(p, p->b);
}

/* The current backend is interrupted: count the failure, keep what the
 * client sent for the next one and start looking for it. */
static void wsp_backend_lost(wsp_pipe_t *p, apr_time_t now, const char *why)
{
    if (wsp_closing(p)) {
        wsp_hop_t *cl = p->client;

        /* the client closed and waits for our reply: give it */
        if (cl && cl->close_rcvd && !cl->close_sent) {
            wsp_client_close(p, now, cl->close_code, cl->close_reason,
                             strlen(cl->close_reason));
        }
        if (!p->b->close_sent || !p->b->close_rcvd) {
            WSP_LOG(p, APLOG_DEBUG, 0, "backend ended while closing (%s)",
                    why);
        }
        wsp_backend_drop(p);
        return;
    }
    WSP_LOG(p, APLOG_WARNING, 0, "backend interrupted (%s); failing over "
            "with %" APR_SIZE_T_FMT " message(s), %" APR_OFF_T_FMT
            " byte(s) buffered", why, p->q.messages, p->q.bytes);
    if (p->b->be) {
        wsp_pool_failed(p->conf->pool, &p->opts, p->b->be, now);
        wsp_pool_failover(p->b->be);
    }
    if (p->b2->bc && !p->b2->retiring) {
        wsp_aux_end(p);             /* the failover picks afresh */
    }
    wsp_backend_drop(p);
    wsp_queue_rewind(&p->q);
    wsp_transit(p, WSP_ST_FAILING_OVER, why);
    /* a slow backend filled the buffer under backpressure: keep that up
     * until the next backend has it, rather than 1013 at the next byte */
    p->full_at_outage = p->q.bytes >= p->conf->buffer_limit;
    p->deadline = now + p->conf->connect_timeout;
    p->retry_at = 0;
}

/* A close frame from the backend. */
/* A peer's text for a log line: printable ASCII as it is, anything else
 * (and quotes, backslashes) as \xHH, so no peer writes into our log. */
static void wsp_log_text(char *out, apr_size_t size, const char *in,
                         apr_size_t len)
{
    static const char hex[] = "0123456789abcdef";
    apr_size_t i, o = 0;

    for (i = 0; i < len && o + 5 < size; i++) {
        unsigned char ch = (unsigned char)in[i];

        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            out[o++] = (char)ch;
        }
        else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
}

static void wsp_backend_closed(wsp_pipe_t *p, apr_time_t now, int code,
                               const char *reason, apr_size_t rlen)
{
    unsigned char pl[WSP_CONTROL_MAX];
    wsp_hop_t *cl = p->client;
    char r[4 * WSP_CONTROL_MAX + 1];

    p->b->close_rcvd = 1;
    if (wsp_closing(p)) {
        /* the reply to our close (or a crossing close) */
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
    wsp_log_text(r, sizeof(r), reason, rlen);
    if (wsp_conf_is_failover_code(p->conf, code)) {
        char why[sizeof(r) + 32];

        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl,
                         wsp_close_payload(pl, code, reason, rlen));
        p->b->close_sent = 1;
        wsp_backend_flush(p, now);
        if (!p->b->bc) {
            return;                 /* the flush found it gone already */
        }
        apr_snprintf(why, sizeof(why), "close %d \"%s\"", code, r);
        wsp_backend_lost(p, now, why);
        return;
    }
    WSP_LOG(p, APLOG_DEBUG, 0, "backend closed with %d \"%s\": session "
            "over", code, r);
    wsp_backend_ctrl(p, WSP_OP_CLOSE, pl,
                     wsp_close_payload(pl, code, reason, rlen));
    p->b->close_sent = 1;
    wsp_client_close(p, now, code, reason, rlen);
}

/* ---- input ------------------------------------------------------------- */

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

/* The reason we give with a close code of our own. */
static const char *wsp_close_text(int code)
{
    switch (code) {
    case WSP_CLOSE_TOO_BIG:
        return "message too big";
    case WSP_CLOSE_INVALID_DATA:
        return "invalid close reason";
    case WSP_CLOSE_POLICY:
        return "policy violation";
    default:
        return "protocol error";
    }
}

static void wsp_client_violation(wsp_pipe_t *p, apr_time_t now, int code)
{
    const char *why = wsp_close_text(code);

    WSP_LOG(p, APLOG_INFO, 0, "client broke the protocol (%s): closing "
            "with %d", why, code);
    wsp_client_close(p, now, code, why, strlen(why));
    /* its stream cannot be parsed any more: read nothing further (no
     * close reply can be found in it) and close once our close is out */
    p->client->close_rcvd = 1;
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN) {
        p->b->close_pending = WSP_CLOSE_GOING_AWAY;
        p->b->close_pending_reason = "client error";
    }
    else {
        wsp_backend_drop(p);
    }
}

static void wsp_client_control(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *cl = p->client;
    const char *reason;
    apr_size_t rlen;
    int code;

    int res = wsp_control(p, &cl->in, wsp_client_pong, &cl->ping_sent,
                          &code, &reason, &rlen);

    if (res >= 1000) {
        wsp_client_violation(p, now, res);
        return;
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
static int wsp_client_feed(wsp_pipe_t *p, apr_time_t now,
                           const unsigned char *data, apr_size_t len)
{
    wsp_hop_t *cl = p->client;
    wsp_hop_in_t *in = &cl->in;

    while ((len > 0 || wsp_hop_pending(in)) && !cl->gone) {
        int ev = wsp_hop_step(p, in, &data, &len);

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
                return 1;
            }
            break;
        }
    }
    return 0;
}

static int wsp_client_read(wsp_pipe_t *p, apr_time_t now, int ready)
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
        int stop = 0;

        if (wsp_backpressure(p)) {
            apr_off_t room = p->conf->buffer_limit - p->q.bytes;

            if (room <= 0) {
                cl->more_input = 1;  /* the backend is slow: wait */
                return progress;
            }
            if (room < want) {
                /* no more than the limit (and the message in flight);
                 * the rest may wait in the core's buffer, so no early
                 * stop below */
                want = room;
                drained_early = 0;
            }
        }
        rv = ap_get_brigade(cl->c->input_filters, cl->ibb, AP_MODE_READBYTES,
                            APR_NONBLOCK_READ, want);
        /* the core answers a non-blocking read with nothing to read by an
         * empty brigade, mod_ssl by EAGAIN */
        if (APR_STATUS_IS_EAGAIN(rv)
            || (rv == APR_SUCCESS && APR_BRIGADE_EMPTY(cl->ibb))) {
            return progress;
        }
        if (rv != APR_SUCCESS) {
            wsp_client_gone(p, now, APR_STATUS_IS_EOF(rv) ? "connection "
                            "closed" : "read failed", rv);
            return 1;
        }
        for (e = APR_BRIGADE_FIRST(cl->ibb);
             e != APR_BRIGADE_SENTINEL(cl->ibb) && !stop;
             e = APR_BUCKET_NEXT(e)) {
            const char *d;
            apr_size_t n;

            if (APR_BUCKET_IS_EOS(e)) {
                wsp_client_gone(p, now, "connection closed", APR_EOF);
                stop = 1;
                break;
            }
            if (apr_bucket_read(e, &d, &n, APR_NONBLOCK_READ) != APR_SUCCESS
                || n == 0) {
                continue;
            }
            total += n;
            got += n;
            cl->last_rx = now;
            cl->ping_sent = 0;
            stop = wsp_client_feed(p, now, (const unsigned char *)d, n);
        }
        apr_brigade_cleanup(cl->ibb);
        progress = 1;
        if (stop) {
            return 1;
        }
        if (drained_early && got < APR_BUCKET_BUFF_SIZE) {
            return progress;
        }
    }
    cl->more_input = 1;
    return progress;
}

/* The backend broke the protocol (1002, 1007) or sent a message over the
 * cap (1009): it gets that close code. A message too big ends the session
 * (the next backend would send it again); a broken protocol is an
 * interruption. */
static void wsp_backend_violation(wsp_pipe_t *p, apr_time_t now, int code,
                                  const char *what)
{
    unsigned char pl[WSP_CONTROL_MAX];
    const char *text = wsp_close_text(code);
    char why[96];

    wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl, code, text,
                                                            strlen(text)));
    p->b->close_sent = 1;
    if (code == WSP_CLOSE_TOO_BIG) {
        WSP_LOG(p, APLOG_INFO, 0, "backend message over %" APR_OFF_T_FMT
                " bytes: closing both hops with 1009",
                wsp_conf_max_message(p->conf));
        wsp_client_close(p, now, code, "backend message too big", 23);
        /* its stream cannot be parsed past the frame: read no more */
        p->b->close_rcvd = 1;
        return;
    }
    wsp_backend_flush(p, now);
    if (p->b->bc) {
        apr_snprintf(why, sizeof(why), "%s broke the protocol: %d (%s)",
                     what, code, text);
        wsp_backend_lost(p, now, why);
    }
}

static void wsp_backend_control(wsp_pipe_t *p, apr_time_t now)
{
    const char *reason;
    apr_size_t rlen;
    int code;

    int res = wsp_control(p, &p->b->in, wsp_backend_ctrl, &p->b->ping_sent,
                          &code, &reason, &rlen);

    if (res >= 1000) {
        wsp_backend_violation(p, now, res, "bad close frame");
    }
    else if (res == WSP_CTL_CLOSE) {
        wsp_backend_closed(p, now, code, reason, rlen);
    }
}

/* A data event from a backend hop: a frame is built for the client, a
 * whole message goes to its output. */
static void wsp_backend_data(wsp_pipe_t *p, wsp_hop_in_t *in, int ev)
{
    wsp_hop_t *cl = p->client;

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
        int ev = wsp_hop_step(p, in, &d, &len);

        bc->ipos = bc->ilen - len;
        if (ev >= 1000) {
            wsp_backend_violation(p, now, ev, "its frames");
            return;
        }
        if (ev == WSP_EV_CONTROL) {
            wsp_backend_control(p, now);
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
static int wsp_backend_hold(wsp_pipe_t *p, apr_time_t now, int ready)
{
    wsp_bconn_t *bc = p->b->bc;
    apr_size_t before;
    apr_status_t rv;

    if (!ready || p->b->ended || bc->ilen - bc->ipos >= WSP_IBUF_SIZE) {
        return 0;
    }
    before = bc->ilen - bc->ipos;
    rv = wsp_bconn_fill(bc);
    if (APR_STATUS_IS_EAGAIN(rv)) {
        return 0;
    }
    if (rv != APR_SUCCESS) {
        p->b->ended = APR_STATUS_IS_EOF(rv) ? "connection closed"
                                           : "read failed";
        return 1;
    }
    apr_atomic_add64(&p->b->be->st->bytes_in, bc->ilen - bc->ipos - before);
    p->b->last_rx = now;
    p->b->ping_sent = 0;
    return 1;
}

static int wsp_backend_read(wsp_pipe_t *p, apr_time_t now, int ready)
{
    apr_size_t total = 0;
    int progress = 0;

    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN && wsp_retiring(p)) {
        return wsp_backend_hold(p, now, ready);
    }
    /* The socket is read only when poll said so: it is level-triggered, so
     * data left behind (budget, a full client) is reported again. */
    while (p->b->bc && p->b->bc->state == WSP_BC_OPEN && !p->b->close_rcvd
           && (!p->client || p->client->out_bytes < WSP_OUT_HIGH)) {
        wsp_bconn_t *bc = p->b->bc;
        apr_size_t before;
        apr_status_t rv;

        if (bc->ipos < bc->ilen || wsp_hop_pending(&p->b->in)) {
            wsp_backend_feed(p, now);
            progress = 1;
            continue;
        }
        if (p->b->ended) {
            wsp_backend_lost(p, now, p->b->ended);   /* held until now */
            return 1;
        }
        if (!ready || total >= WSP_READ_BUDGET) {
            break;
        }
        bc->ipos = bc->ilen = 0;    /* all of it was fed above */
        before = 0;
        rv = wsp_bconn_fill(bc);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            return progress;
        }
        if (rv != APR_SUCCESS) {
            wsp_backend_lost(p, now, APR_STATUS_IS_EOF(rv)
                             ? "connection closed" : "read failed");
            return 1;
        }
        total += bc->ilen - before;
        apr_atomic_add64(&p->b->be->st->bytes_in, bc->ilen - before);
        if (bc->ilen - before < WSP_IBUF_SIZE
            && !wsp_bconn_buffers_input(bc)) {
            ready = 0;              /* a short read drained the socket */
        }
        p->b->last_rx = now;
        p->b->ping_sent = 0;
        progress = 1;
    }
    return progress;
}

/* ---- connecting -------------------------------------------------------- */

/* The handshake request for the backend the pipe is connecting to. */
static const char *wsp_backend_request(void *baton, apr_pool_t *tp,
                                       const char *key)
{
    wsp_pipe_t *p = baton;
    wsp_backend_req_t req;
    apr_table_t *h = apr_table_copy(tp, p->fwd);

    apr_table_setn(h, "X-WS-Persist-Client-Id", p->id);
    apr_table_setn(h, "X-WS-Persist-Resume",
                   apr_itoa(tp, p->connections));
    req.path = apr_pstrcat(tp, p->req_be->path, p->rest, NULL);
    req.host = p->req_be->hostport;
    req.key = key;
    req.protocol = p->connections ? p->protocol : p->offered;
    req.headers = h;
    return wsp_handshake_request(tp, &req);
}

/* How long one backend may take to complete a handshake: one hung
 * backend must not use up the whole connect timeout. */
static apr_interval_time_t wsp_attempt_time(const wsp_pipe_t *p)
{
    apr_interval_time_t per = p->conf->connect_timeout / 3;

    return per < apr_time_from_sec(1) ? apr_time_from_sec(1) : per;
}

/* Start a handshake with the next usable backend, if any. */
static void wsp_connect_next(wsp_pipe_t *p, apr_time_t now)
{
    int tries = p->conf->pool->backends->nelts;

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

static void wsp_connected(wsp_pipe_t *p, apr_time_t now)
{
    wsp_bconn_t *bc = p->b->bc;

    wsp_pool_succeeded(p->conf->pool, p->b->be);
    if (!p->connections) {
        wsp_registry_pin(p, bc->protocol);
    }
    WSP_LOG(p, APLOG_DEBUG, 0, "connected (resume %d)", p->connections);
    p->connections++;
    wsp_hop_init(&p->b->in, WSP_FROM_SERVER, wsp_conf_max_message(p->conf),
                 p->client->c->bucket_alloc, p->b->in.msg);
    p->b->last_rx = now;
    p->b->ping_sent = 0;
    p->b->ended = NULL;
    wsp_backend_ctrl_reset(p);
    wsp_transit(p, WSP_ST_LIVE, p->b->be->url);
}

static int wsp_connect_step(wsp_pipe_t *p, apr_time_t now)
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
    res = wsp_bconn_handshake(p->b->bc, &why);
    if (res == WSP_HS_MORE && now >= p->b->deadline) {
        res = WSP_HS_FAIL;
        why = "handshake timed out";
    }
    if (res == WSP_HS_MORE) {
        return 0;
    }
    if (res == WSP_HS_OK) {
        wsp_connected(p, now);
        return 1;
    }
    WSP_LOG(p, APLOG_WARNING, 0, "handshake failed: %s", why);
    wsp_pool_failed(p->conf->pool, &p->opts, p->b->be, now);
    wsp_bhop_end(p, p->b);
    p->retry_at = 0;
    return 1;
}

/* No backend in time: 503 at connect time, 1014 during a failover. */
static void wsp_connect_timeout(wsp_pipe_t *p, apr_time_t now)
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

/* ---- moving off a draining backend ------------------------------------ */

static int wsp_retiring(const wsp_pipe_t *p)
{
    return p->b2->bc && p->b2->retiring && !wsp_closing(p);
}

int wsp_pipe_should_move(const wsp_pipe_t *p)
{
    return p->state == WSP_ST_LIVE && p->b->be && p->b->bc
           && p->b->bc->state == WSP_BC_OPEN && !p->b2->bc && p->client
           && p->client->upgraded && wsp_pool_leaving(p->b->be);
}

/* Let go of the second backend connection, whichever role it had. */
static void wsp_aux_end(wsp_pipe_t *p)
{
    if (p->state == WSP_ST_MOVING) {
        wsp_transit(p, WSP_ST_LIVE, "replacement let go");
    }
    wsp_bhop_end(p, p->b2);
    if (p->b2->in.msg && p->client && !p->client->spare) {
        p->client->spare = p->b2->in.msg;   /* the next move's */
    }
    p->b2->in.msg = NULL;
}

/* Begin a handshake with a replacement for the draining backend. With
 * none usable the pipe stays where it is and asks again later. */
static void wsp_move_start(wsp_pipe_t *p, apr_time_t now)
{
    apr_time_t next = 0;
    wsp_backend_t *be = wsp_pool_acquire(p->conf->pool, &p->opts, now,
                                         p->b->be, &next);
    apr_status_t rv;

    p->move_at = now + WSP_MOVE_RETRY;
    if (!be) {
        WSP_LOG(p, APLOG_DEBUG, 0, "backend draining, no other usable yet");
        return;
    }
    p->req_be = be;
    rv = wsp_bconn_open(&p->b2->bc, p->pool, p->s, be, wsp_backend_request, p,
                        p->protocol, p->protocol != NULL);
    if (rv != APR_SUCCESS) {
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
static int wsp_move_switch(wsp_pipe_t *p, apr_time_t now)
{
    wsp_hop_t *cl = p->client, *old = p->b;
    wsp_bconn_t *old_bc = p->b->bc;

    if (!p->b2->bc || p->b2->retiring || p->b2->bc->state != WSP_BC_OPEN
        || p->state != WSP_ST_MOVING || !old_bc
        || old_bc->state != WSP_BC_OPEN || !cl || !cl->spare
        || !wsp_queue_at_message_boundary(&p->q)
        || p->b->ctrl_off < p->b->ctrl_len || p->b->close_pending
        || p->b->close_sent || p->b->close_rcvd) {
        return 0;
    }
    /* the two hops swap: the old backend is the retiring second one */
    p->b = p->b2;
    p->b2 = old;
    p->b->in.msg = cl->spare;
    cl->spare = NULL;
    old->retiring = 1;
    old->deadline = now + WSP_RETIRE_CAP;
    old->last_rx = now;
    old->want_write = 0;
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
    res = wsp_bconn_handshake(p->b2->bc, &why);
    if (res == WSP_HS_MORE && now >= p->b2->deadline) {
        res = WSP_HS_FAIL;
        why = "handshake timed out";
    }
    if (res == WSP_HS_MORE) {
        return 0;
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
        int ev = wsp_hop_step(p, in, &d, &len);

        bc->ipos = bc->ilen - len;
        if (ev >= 1000) {
            return 1;                /* it is leaving anyway */
        }
        if (ev != WSP_EV_CONTROL) {
            wsp_backend_data(p, in, ev);
        }
        else if (in->rd.hdr.opcode == WSP_OP_CLOSE) {
            return 1;
        }                            /* pings go unanswered: it is closing */
    }
    return 0;
}

/* The retiring backend's 1001, once it is quiet (or at the cap). */
static void wsp_retire_close(wsp_pipe_t *p, apr_time_t now)
{
    unsigned char pl[WSP_CONTROL_MAX], key[4];
    apr_size_t h, len;

    if (p->b2->close_sent || (now < p->b2->last_rx + WSP_RETIRE_QUIET
                            && now < p->b2->deadline)) {
        return;
    }
    len = wsp_close_payload(pl, WSP_CLOSE_GOING_AWAY, "backend draining",
                            16);
    wsp_rng_key(p, key);
    h = wsp_frame_header(p->b2->ctrl, 1, WSP_OP_CLOSE, len, key);
    wsp_mask(p->b2->ctrl + h, pl, len, key, 0);
    p->b2->ctrl_len = h + len;
    p->b2->ctrl_off = 0;
    p->b2->close_sent = 1;
    p->b2->deadline = now + WSP_CLOSE_WAIT;
}

static int wsp_retire_step(wsp_pipe_t *p, apr_time_t now, int ready)
{
    wsp_bconn_t *bc = p->b2->bc;
    wsp_hop_t *cl = p->client;
    const char *done = NULL;
    apr_status_t rv;
    int progress = 0;

    wsp_retire_close(p, now);
    p->b2->want_write = 0;
    while (p->b2->ctrl_off < p->b2->ctrl_len) {
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
        if (!ready || (cl && cl->out_bytes >= WSP_OUT_HIGH)) {
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

static int wsp_aux_step(wsp_pipe_t *p, apr_time_t now, int ready)
{
    if (!p->b2->bc) {
        return 0;
    }
    return p->b2->retiring ? wsp_retire_step(p, now, ready)
                           : wsp_move_handshake(p, now);
}

/* ---- timers and the end ---------------------------------------------- */

static void wsp_pings(wsp_pipe_t *p, apr_time_t now)
{
    apr_interval_time_t iv = p->conf->ping_interval;
    wsp_hop_t *cl = p->client;
    static const unsigned char beat[] = "wsp";

    if (iv <= 0 || wsp_closing(p)) {
        return;
    }
    if (cl && cl->upgraded && !cl->gone) {
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
        if (p->b->ping_sent && now - p->b->ping_sent >= iv) {
            wsp_backend_lost(p, now, "no pong");
            return;
        }
        if (!p->b->ping_sent && now - p->b->last_rx >= iv) {
            wsp_backend_ctrl(p, WSP_OP_PING, beat, 3);
            p->b->ping_sent = now;
        }
    }
}

static int wsp_client_done(const wsp_pipe_t *p, apr_time_t now)
{
    const wsp_hop_t *cl = p->client;

    if (!cl || cl->gone) {
        return 1;
    }
    if (!cl->close_sent) {
        return 0;
    }
    if (!APR_BRIGADE_EMPTY(cl->out) || cl->c->data_in_output_filters) {
        return now >= p->close_deadline;
    }
    return cl->close_rcvd || now >= p->close_deadline;
}

static int wsp_backend_done(const wsp_pipe_t *p, apr_time_t now)
{
    if (!p->b->bc || p->b->bc->state != WSP_BC_OPEN) {
        return 1;
    }
    if (p->b->close_sent && p->b->close_rcvd && p->b->ctrl_off == p->b->ctrl_len
        && !p->b->owed.close_due) {
        return 1;
    }
    return now >= p->close_deadline;
}

static void wsp_check_done(wsp_pipe_t *p, apr_time_t now)
{
    if (p->state != WSP_ST_CLOSING) {
        return;
    }
    if (p->b->bc && p->b->bc->state != WSP_BC_OPEN) {
        wsp_backend_drop(p);          /* a handshake is of no use now */
    }
    if (p->b2->bc && !p->b2->retiring) {
        wsp_aux_end(p);               /* nor a replacement */
    }
    if (now >= p->close_deadline && p->client && !p->client->gone
        && p->client->close_rcvd && !p->client->close_sent) {
        /* the backend never answered the close the client sent: the
         * client gets its reply now, and nobody is waited for longer */
        WSP_LOG(p, APLOG_INFO, 0, "no close reply from the backend in "
                "time: answering the client and ending");
        wsp_backend_drop(p);
        wsp_client_close(p, now, p->client->close_code,
                         p->client->close_reason,
                         strlen(p->client->close_reason));
        wsp_client_flush(p, now);
    }
    if (wsp_client_done(p, now) && wsp_backend_done(p, now)) {
        wsp_backend_drop(p);
        wsp_aux_end(p);
        wsp_transit(p, WSP_ST_DONE, "both hops closed");
    }
}

/* ---- the driver interface --------------------------------------------- */

#define WSP_READY(ev) (((ev) & (APR_POLLIN | APR_POLLHUP | APR_POLLERR)) != 0)

void wsp_pipe_set_driver(wsp_pipe_t *p,
                         void (*fn)(void *baton, apr_socket_t *sock),
                         void *baton)
{
    p->on_bclose = fn;
    p->driver_baton = baton;
}

void wsp_pipe_run(wsp_pipe_t *p, const apr_int16_t rev[WSP_SOCKS])
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
    if (wsp_pipe_should_move(p) && now >= p->move_at) {
        wsp_move_start(p, now);
    }
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
    *cev = 0;
    *bsock = NULL;
    *bev = 0;
    *asock = NULL;
    *aev = 0;
    if (cl && cl->upgraded && !cl->gone) {
        if (!cl->close_rcvd && !cl->more_input) {
            *cev |= APR_POLLIN;
        }
        if (cl->want_write) {
            *cev |= APR_POLLOUT;
        }
        if (cl->more_input && !cl->close_rcvd && !(wsp_backpressure(p)
                                && p->q.bytes >= p->conf->buffer_limit)) {
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
            else if (!p->b->close_rcvd
                && (!cl || cl->out_bytes < WSP_OUT_HIGH)) {
                *bev |= APR_POLLIN;
                if (wsp_bconn_buffers_input(p->b->bc)) {
                    WSP_SOONER(apr_time_now());
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
    if (p->b2->bc) {
        *asock = p->b2->bc->sock;
        if (p->b2->retiring) {
            if (!cl || cl->out_bytes < WSP_OUT_HIGH) {
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
        WSP_SOONER(p->move_at ? p->move_at : apr_time_now());
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
    if ((rv = apr_pool_create(&p->rpool, pool)) != APR_SUCCESS) {
        apr_pool_destroy(pool);
        return rv;
    }
    p->fwd = apr_table_make(p->rpool, 8);
    p->rest = "";
    wsp_queue_init(&p->q, pool, p->ba);
    apr_generate_random_bytes((unsigned char *)&p->rng, sizeof(p->rng));
    p->rng |= 1;
    p->hops[0].kind = p->hops[1].kind = WSP_HOP_BACKEND;
    p->b = &p->hops[0];
    p->b2 = &p->hops[1];
    p->b->in.msg = apr_brigade_create(pool, p->ba);
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
    cl->sock = ap_get_conn_socket(c);
    cl->plain = !ap_ssl_conn_is_ssl(c);
    for (f = c->output_filters; f->next; f = f->next)
        ;
    cl->core_out = f;
    wsp_hop_init(&cl->in, WSP_FROM_CLIENT, wsp_conf_max_message(p->conf),
                 p->ba, apr_brigade_create(r->pool, p->ba));
    cl->ibb = apr_brigade_create(r->pool, c->bucket_alloc);
    cl->out = apr_brigade_create(r->pool, c->bucket_alloc);
    cl->tmp = apr_brigade_create(r->pool, c->bucket_alloc);
    cl->spare = apr_brigade_create(r->pool, c->bucket_alloc);
    p->client = cl;
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

void wsp_pipe_detach(wsp_pipe_t *p)
{
    wsp_hop_t *cl = p->client;
    unsigned char pl[WSP_CONTROL_MAX];
    apr_size_t n;

    WSP_LOG(p, APLOG_INFO, 0, "a newer connection takes the pipe over: "
            "closing this one with 1008");
    if (!cl->gone) {
        n = wsp_close_payload(pl, WSP_CLOSE_POLICY, "replaced", 8);
        apr_brigade_cleanup(cl->out);
        wsp_client_ctrl(p, WSP_OP_CLOSE, pl, n);
        cl->close_sent = 1;
        wsp_client_flush(p, apr_time_now());
    }
    wsp_aux_end(p);
    /* a backend handshake under way stays with this thread (mod_ssl's
     * runs on a coroutine of its stack): the next driver starts afresh */
    if (p->b->bc && p->b->bc->state != WSP_BC_OPEN) {
        wsp_bhop_end(p, p->b);
        p->retry_at = 0;
    }
    /* what this thread allocated stays with it */
    wsp_hop_drop(&cl->in);
    if (wsp_hop_mid_message(&p->b->in)) {
        p->b->in.drop = 1;
    }
    wsp_hop_drop(&p->b->in);
    p->b->in.msg = NULL;
    p->client = NULL;
}

int wsp_pipe_handover_begin(wsp_pipe_t *p)
{
    return p->handover == WSP_HANDOVER_ASKED && p->client
           && p->client->upgraded && !wsp_closing(p)
           && wsp_registry_begin_handover(p);
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

void wsp_pipe_going_away(wsp_pipe_t *p)
{
    apr_time_t now = apr_time_now();
    unsigned char pl[WSP_CONTROL_MAX];

    WSP_LOG(p, APLOG_INFO, 0, "server stopping: closing with 1001");
    wsp_client_close(p, now, WSP_CLOSE_GOING_AWAY, "server stopping", 15);
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN && !p->b->close_sent) {
        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl,
                         WSP_CLOSE_GOING_AWAY, "client went away", 16));
        p->b->close_sent = 1;
    }
    wsp_client_flush(p, now);
    wsp_backend_flush(p, now);
    wsp_aux_end(p);
}

void wsp_pipe_destroy(wsp_pipe_t *p)
{
    wsp_aux_end(p);
    wsp_bhop_end(p, p->b);
    if (p->client) {
        wsp_hop_drop(&p->client->in);
    }
    wsp_queue_clear(&p->q);
    apr_bucket_alloc_destroy(p->ba);
    apr_pool_destroy(p->pool);
}
