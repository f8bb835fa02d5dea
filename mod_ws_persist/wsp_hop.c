/* A hop's frames: the reader that gathers a peer's frames into whole
 * messages, building frames of our own as payload arrives, and the
 * control frames owed to a peer. Knows no pipe. */
#include "apr_strings.h"

#include "wsp_hop.h"

/* Payload room of a built frame: with its header room it fills one block
 * of the bucket allocator. */
#define WSP_CHUNK (APR_BUCKET_BUFF_SIZE - WSP_FRAME_HDR_MAX)
/* Header bytes a message may carry beyond its payload before its wire
 * size passes the message cap: a few hundred fragments' worth. */
#define WSP_FRAG_SLACK 4096

/* xorshift64*: mask keys need to be unpredictable to a peer, not secret,
 * and a syscall per frame would cost more than the frame. */
void wsp_rng_key(apr_uint64_t *rng, unsigned char key[4])
{
    apr_uint64_t x = *rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x *= APR_UINT64_C(2685821657736338717);
    memcpy(key, &x, 4);
}

void wsp_hop_init(wsp_hop_in_t *in, wsp_from_e from, apr_off_t max,
                  apr_bucket_alloc_t *ba, apr_bucket_brigade *msg,
                  apr_uint64_t *rng)
{
    memset(in, 0, sizeof(*in));
    in->rng = rng;
    wsp_reader_init(&in->rd, from, (apr_uint64_t)max);
    in->ba = ba;
    in->remask = from == WSP_FROM_CLIENT;
    in->msg = msg;
    in->wire_max = max > 0 ? max + WSP_FRAG_SLACK : 0;
}

/* Forget a half-built message (its memory goes back). */
void wsp_hop_drop(wsp_hop_in_t *in)
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
int wsp_hop_mid_message(const wsp_hop_in_t *in)
{
    return in->rd.msg_opcode || in->emitted || in->chunk
           || (in->in_payload && !WSP_OP_IS_CONTROL(in->rd.hdr.opcode));
}

/* More to do without input: a frame whose payload is all there. */
int wsp_hop_pending(const wsp_hop_in_t *in)
{
    return in->in_payload && in->rd.remaining == 0;
}

static apr_size_t wsp_hop_hdr_len(apr_uint64_t len, int masked)
{
    return 2 + (len > 125 ? 2 : 0) + (len > 65535 ? 6 : 0)
           + (masked ? 4 : 0);
}

/* What the current frame would be as one of ours. */
apr_size_t wsp_hop_total(const wsp_hop_in_t *in)
{
    const wsp_frame_hdr_t *h = &in->rd.hdr;

    return (apr_size_t)h->len + wsp_hop_hdr_len(h->len, in->remask);
}

/* A frame to copy payload into, once payload arrives: as large as the
 * bytes of this frame at hand (never what its header claims), at least a
 * block so that small fragments share one, and just its size for a short
 * message in one frame. */
static void wsp_hop_chunk(wsp_hop_in_t *in, apr_size_t avail)
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
        wsp_rng_key(in->rng, in->key);
    }
}

/* The frame being filled is done: its header goes in front of its
 * payload and it joins the message. A frame filled far below its room is
 * copied into one of its size, so that what a message holds is what it
 * is charged. */
static void wsp_hop_emit(wsp_hop_in_t *in, int fin)
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
            wsp_rng_key(in->rng, in->key);
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

static int wsp_hop_frame_done(wsp_hop_in_t *in)
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
    wsp_hop_emit(in, 1);
    in->emitted = 0;
    return WSP_EV_MESSAGE;
}

/* Copy payload of the current data frame into the frame being built. */
static apr_size_t wsp_hop_fill(wsp_hop_in_t *in,
                               const unsigned char *data, apr_size_t len)
{
    unsigned char k[4], *key = NULL;
    apr_size_t want;

    if (in->chunk && in->chunk_len == in->chunk_cap) {
        wsp_hop_emit(in, 0);
    }
    if (!in->chunk) {
        wsp_hop_chunk(in, len);
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
int wsp_hop_step(wsp_hop_in_t *in,
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
            return h->len == 0 ? wsp_hop_frame_done(in)
                               : wsp_hop_step(in, data, len);
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
            n = wsp_hop_fill(in, *data, *len);
        }
        *data += n;
        *len -= n;
    }
    if (in->rd.remaining == 0) {
        return wsp_hop_frame_done(in);
    }
    return WSP_EV_NONE;
}

/* A control frame owed to a peer: kept in its slot until it can go. */
void wsp_owe(wsp_owed_t *o, int opcode, const unsigned char *payload,
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

/* The next control frame owed to a backend hop, encoded into its ctrl
 * (called at a frame boundary with nothing in it). Returns 0 when none. */
int wsp_hop_next_ctrl(wsp_hop_t *hop, apr_uint64_t *rng)
{
    static const unsigned char beat[] = "wsp";
    wsp_owed_t *o = &hop->owed;
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
    wsp_rng_key(rng, key);
    h = wsp_frame_header(hop->ctrl, 1, op, len, key);
    wsp_mask(hop->ctrl + h, pl, len, key, 0);
    hop->ctrl_len = h + len;
    hop->ctrl_off = 0;
    return 1;
}

/* A peer's text for a log line: printable ASCII as it is, anything else
 * (and quotes, backslashes) as \xHH, so no peer writes into our log. */
void wsp_log_text(char *out, apr_size_t size, const char *in,
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

/* The reason we give with a close code of our own. */
const char *wsp_close_text(int code)
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
