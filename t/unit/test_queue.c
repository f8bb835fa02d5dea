/* The client-to-backend message queue: byte accounting, partial writes,
 * replay after failover (wsp_queue.c). */

#include <apr_buckets.h>
#include <apr_strings.h>

#include "wsp_test.h"
#include "wsp_queue.h"

#define OP_CONT 0x0
#define OP_TEXT 0x1

/* Frames hold NUL bytes (a non-FIN continuation starts with 0x00), so
 * wire data is kept with its length, not as C strings. */
typedef struct {
    char d[512];
    apr_size_t n;
} wire_t;

/* got holds exactly want's bytes from offset off on. */
#define CHECK_WIRE(got, want, off) do { \
    CHECK_INT((got).n, (want).n - (off)); \
    CHECK((got).n == (want).n - (off) \
          && !memcmp((got).d, (want).d + (off), (got).n)); \
} while (0)

/* One unmasked frame with a payload under 126 bytes, as a heap bucket. */
static apr_bucket *frame(apr_bucket_alloc_t *ba, int fin, int op,
                         const char *payload)
{
    apr_size_t n = strlen(payload);
    char *buf = apr_bucket_alloc(n + 2, ba);

    buf[0] = (char)((fin ? 0x80 : 0) | op);
    buf[1] = (char)n;
    memcpy(buf + 2, payload, n);
    return apr_bucket_heap_create(buf, n + 2, apr_bucket_free, ba);
}

/* Push a message of nparts fragments; appends its encoding to wire (if
 * given) and returns its length on the wire. */
static apr_size_t push(wsp_queue_t *q, apr_pool_t *p, apr_bucket_alloc_t *ba,
                       wire_t *wire, int nparts, const char *const *parts)
{
    apr_bucket_brigade *msg = apr_brigade_create(p, ba);
    apr_size_t total = 0;
    int i;

    for (i = 0; i < nparts; ++i) {
        apr_bucket *b = frame(ba, i == nparts - 1, i ? OP_CONT : OP_TEXT,
                              parts[i]);
        const char *data;
        apr_size_t len;

        apr_bucket_read(b, &data, &len, APR_BLOCK_READ);
        if (wire) {
            memcpy(wire->d + wire->n, data, len);
            wire->n += len;
        }
        total += len;
        APR_BRIGADE_INSERT_TAIL(msg, b);
    }
    wsp_queue_push(q, msg);
    if (!APR_BRIGADE_EMPTY(msg)) {
        fprintf(stderr, "push: frames left in the message brigade\n");
        exit(2);
    }
    return total;
}

static apr_size_t push1(wsp_queue_t *q, apr_pool_t *p, apr_bucket_alloc_t *ba,
                        wire_t *wire, const char *text)
{
    return push(q, p, ba, wire, 1, &text);
}

/* All the queue offers at once. */
static wire_t *offered(apr_pool_t *p, wsp_queue_t *q)
{
    struct iovec vec[64];
    int i, n = wsp_queue_iov(q, vec, 64);
    wire_t *w = apr_pcalloc(p, sizeof(*w));

    for (i = 0; i < n; ++i) {
        memcpy(w->d + w->n, vec[i].iov_base, vec[i].iov_len);
        w->n += vec[i].iov_len;
    }
    return w;
}

/* What the queue holds, counted from its brigades. */
static apr_off_t held(wsp_queue_t *q)
{
    apr_off_t a = 0, b = 0;

    apr_brigade_length(q->pending, 1, &a);
    apr_brigade_length(q->written, 1, &b);
    return a + b;
}

static wsp_queue_t *mkqueue(apr_pool_t *p, apr_bucket_alloc_t **ba)
{
    wsp_queue_t *q = apr_pcalloc(p, sizeof(*q));

    *ba = apr_bucket_alloc_create(p);
    wsp_queue_init(q, p, *ba);
    return q;
}

static const char *const three[] = { "ab", "cd", "ef" };

/* The cost model: small nodes for tiny frames, allocator blocks above. */
static void test_frame_cost(apr_pool_t *p)
{
    (void)p;
    CHECK_INT(wsp_frame_cost(0), 128 + 256);
    CHECK_INT(wsp_frame_cost(112), 128 + 256);
    CHECK_INT(wsp_frame_cost(113), 8192 + 256);
    CHECK_INT(wsp_frame_cost(8000), 8192 + 256);
    CHECK_INT(wsp_frame_cost(16392), 20480 + 256);
}

static void test_empty(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    struct iovec vec[4];

    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->messages, 0);
    CHECK_INT(wsp_queue_iov(q, vec, 4), 0);
    CHECK(wsp_queue_at_frame_boundary(q));
}

static void test_push_counts(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);

    CHECK_INT(push1(q, p, ba, NULL, "hello"), 7);
    CHECK_INT(q->bytes, 7);
    CHECK_INT(q->messages, 1);
    CHECK_INT(push(q, p, ba, NULL, 3, three), 12);
    CHECK_INT(q->bytes, 19);
    CHECK_INT(q->messages, 2);
    CHECK_INT(held(q), 19);
    /* four frames: the cap charges each one's bucket too */
    CHECK_INT(q->cost, wsp_frame_cost(7) + 3 * wsp_frame_cost(4));
}

static void test_consume_whole_messages(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);

    push1(q, p, ba, NULL, "hello");
    push1(q, p, ba, NULL, "abc");
    wsp_queue_consumed(q, 7);
    CHECK_INT(q->bytes, 5);
    CHECK_INT(q->messages, 1);
    CHECK_INT(held(q), 5);
    CHECK_INT(q->cost, wsp_frame_cost(5));
    wsp_queue_consumed(q, 5);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->cost, 0);
    CHECK_INT(q->messages, 0);
    CHECK(APR_BRIGADE_EMPTY(q->pending));
    CHECK(APR_BRIGADE_EMPTY(q->written));
}

/* A frame written in pieces is held whole until its last byte, and the
 * next write starts where the last one stopped. */
static void test_partial_frame(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push1(q, p, ba, &wire, "hello");
    wsp_queue_consumed(q, 3);
    CHECK_INT(q->bytes, 7);
    CHECK_INT(q->messages, 1);
    CHECK(!wsp_queue_at_frame_boundary(q));
    CHECK_WIRE(*offered(p, q), wire, 3);
    wsp_queue_consumed(q, 3);
    CHECK_WIRE(*offered(p, q), wire, 6);
    CHECK_INT(q->bytes, 7);
    wsp_queue_consumed(q, 1);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->messages, 0);
    CHECK(wsp_queue_at_frame_boundary(q));
}

/* One write that ends inside the second message. */
static void test_consume_across_frames(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push1(q, p, ba, &wire, "abc");
    push1(q, p, ba, &wire, "defg");
    wsp_queue_consumed(q, 7);
    CHECK_INT(q->bytes, 6);
    CHECK_INT(q->messages, 1);
    CHECK_INT(q->head_off, 2);
    CHECK_WIRE(*offered(p, q), wire, 7);
}

/* The frames of a fragmented message stay held, and counted, until the
 * FIN frame is written. */
static void test_fragments_held_until_fin(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);

    push(q, p, ba, NULL, 3, three);
    wsp_queue_consumed(q, 4);
    CHECK_INT(q->bytes, 12);
    CHECK_INT(q->messages, 1);
    CHECK(wsp_queue_at_frame_boundary(q));
    wsp_queue_consumed(q, 4);
    CHECK_INT(q->bytes, 12);
    CHECK_INT(held(q), 12);
    wsp_queue_consumed(q, 3);
    CHECK_INT(q->bytes, 12);
    wsp_queue_consumed(q, 1);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->messages, 0);
    CHECK(APR_BRIGADE_EMPTY(q->written));
}

static void test_rewind_partial_frame(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push1(q, p, ba, &wire, "hello");
    wsp_queue_consumed(q, 3);
    wsp_queue_rewind(q);
    CHECK(wsp_queue_at_frame_boundary(q));
    CHECK_WIRE(*offered(p, q), wire, 0);
    CHECK_INT(q->bytes, 7);
    CHECK_INT(q->messages, 1);
}

/* Cut inside the second fragment: the next backend gets the message from
 * its first fragment, then what followed, in order. */
static void test_rewind_replays_message(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push(q, p, ba, &wire, 3, three);
    push1(q, p, ba, &wire, "next");
    wsp_queue_consumed(q, 4 + 2);
    wsp_queue_rewind(q);
    CHECK_WIRE(*offered(p, q), wire, 0);
    CHECK_INT(q->bytes, 18);
    CHECK_INT(q->messages, 2);
    CHECK_INT(held(q), 18);
}

/* Cut at a fragment boundary: no byte of the fragment in flight is sent,
 * yet the fragments already written are sent again. */
static void test_rewind_at_fragment_boundary(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push(q, p, ba, &wire, 3, three);
    wsp_queue_consumed(q, 8);
    wsp_queue_rewind(q);
    CHECK_WIRE(*offered(p, q), wire, 0);
    CHECK_INT(q->bytes, 12);
}

/* Messages written whole before the failure are not sent twice. */
static void test_rewind_skips_finished(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };
    apr_size_t first, second;

    first = push1(q, p, ba, &wire, "one");
    second = push(q, p, ba, &wire, 3, three);
    push1(q, p, ba, &wire, "three");
    wsp_queue_consumed(q, first + second + 1);
    wsp_queue_rewind(q);
    CHECK_WIRE(*offered(p, q), wire, first + second);
    CHECK_INT(q->messages, 1);
    CHECK_INT(q->bytes, 7);
    CHECK_INT(held(q), 7);
}

/* Cut after a whole message and one fragment of the next: the replay
 * starts at that next message. */
static void test_rewind_after_finished_and_fragment(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };
    apr_size_t first;

    first = push1(q, p, ba, &wire, "one");
    push(q, p, ba, &wire, 3, three);
    push1(q, p, ba, &wire, "three");
    wsp_queue_consumed(q, first + 4);
    wsp_queue_rewind(q);
    CHECK_WIRE(*offered(p, q), wire, first);
    CHECK_INT(q->messages, 2);
    CHECK_INT(q->bytes, 12 + 7);
}

/* Two failures in a row: the second rewind replays the same bytes as the
 * first, no more. */
static void test_rewind_twice(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { "", 0 };

    push(q, p, ba, &wire, 3, three);
    wsp_queue_consumed(q, 5);
    wsp_queue_rewind(q);
    wsp_queue_consumed(q, 9);
    wsp_queue_rewind(q);
    CHECK_WIRE(*offered(p, q), wire, 0);
    CHECK_INT(q->bytes, 12);
    CHECK_INT(held(q), 12);
}

static void test_iov_spans_buckets(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    struct iovec vec[8];

    push1(q, p, ba, NULL, "hello");
    push(q, p, ba, NULL, 3, three);
    wsp_queue_consumed(q, 2);
    CHECK_INT(wsp_queue_iov(q, vec, 8), 4);
    CHECK_INT(vec[0].iov_len, 5);
    CHECK(!memcmp(vec[0].iov_base, "hello", 5));
    CHECK_INT(vec[1].iov_len, 4);
    CHECK(!memcmp((char *)vec[1].iov_base + 2, "ab", 2));
    CHECK(!memcmp((char *)vec[3].iov_base + 2, "ef", 2));
    /* nvec bounds the count */
    CHECK_INT(wsp_queue_iov(q, vec, 2), 2);
    CHECK_INT(vec[0].iov_len, 5);
    CHECK_INT(vec[1].iov_len, 4);
}

static void test_clear(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    struct iovec vec[4];

    push(q, p, ba, NULL, 3, three);
    push1(q, p, ba, NULL, "hello");
    wsp_queue_consumed(q, 5);
    wsp_queue_clear(q);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->messages, 0);
    CHECK_INT(q->head_off, 0);
    CHECK(APR_BRIGADE_EMPTY(q->pending));
    CHECK(APR_BRIGADE_EMPTY(q->written));
    CHECK_INT(wsp_queue_iov(q, vec, 4), 0);
    /* usable again */
    push1(q, p, ba, NULL, "x");
    CHECK_INT(q->bytes, 3);
    CHECK_INT(q->messages, 1);
}

/* Odd-sized writes with a failover in the middle: bytes matches the
 * brigades after every step, and the whole stream arrives. */
static void test_bytes_exact_throughout(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    static const char *const two[] = { "fragment one", "and two" };
    wire_t wire = { "", 0 }, out = { "", 0 };
    apr_size_t total = 0, sent = 0, step = 1;
    int rewound = 0;

    total += push1(q, p, ba, &wire, "first");
    total += push(q, p, ba, &wire, 3, three);
    total += push(q, p, ba, &wire, 2, two);
    total += push1(q, p, ba, &wire, "last one");
    CHECK_INT(q->bytes, total);
    while (q->bytes > 0) {
        struct iovec vec[1];
        apr_size_t n;

        if (!wsp_queue_iov(q, vec, 1)) {
            CHECK(0);       /* bytes held but nothing offered */
            break;
        }
        n = vec[0].iov_len < step ? vec[0].iov_len : step;
        memcpy(out.d + out.n, vec[0].iov_base, n);
        out.n += n;
        wsp_queue_consumed(q, n);
        sent += n;
        step = step % 5 + 1;
        if (q->bytes != held(q)) {
            CHECK_INT(q->bytes, held(q));
            break;
        }
        if (!rewound && sent > 19 + 14) {
            /* inside the second fragment of "two": the next backend gets
             * that message from its first fragment */
            CHECK(!APR_BRIGADE_EMPTY(q->written) && q->head_off > 0);
            wsp_queue_rewind(q);
            rewound = 1;
            out.n = 19;
            CHECK_INT(q->bytes, held(q));
        }
    }
    CHECK(rewound);
    CHECK_WIRE(out, wire, 0);
    CHECK_INT(q->messages, 0);
}

/* Write everything the queue offers now, as one backend would take it. */
static void write_all(wsp_queue_t *q)
{
    struct iovec vec[64];
    int i, n;

    while ((n = wsp_queue_iov(q, vec, 64)) > 0) {
        for (i = 0; i < n; ++i) {
            wsp_queue_consumed(q, vec[i].iov_len);
        }
    }
}

/* Messages are numbered from 1 as pushed; without keep, a message
 * written whole is gone and the next is the one after it. */
static void test_numbers(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);

    CHECK_INT(wsp_queue_next(q), 1);
    push1(q, p, ba, NULL, "one");
    push1(q, p, ba, NULL, "two");
    CHECK_INT(q->pushed, 2);
    CHECK_INT(wsp_queue_first(q), 1);
    write_all(q);
    CHECK_INT(q->done, 2);
    CHECK_INT(wsp_queue_next(q), 3);
    CHECK_INT(wsp_queue_first(q), 3);
    CHECK_INT(q->kept_msgs, 0);
    CHECK_INT(q->cost, 0);
    wsp_queue_rewind(q);
    CHECK_INT(wsp_queue_next(q), 3);
    CHECK_INT(q->bytes, 0);
}

/* With keep, written messages stay (in cost, not in bytes) until
 * acknowledged, and a rewind writes them again first, in order. */
static void test_keep_rewind(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { {0}, 0 };
    wire_t *w;
    apr_off_t cost;

    q->keep = 1;
    push1(q, p, ba, &wire, "one");
    push(q, p, ba, &wire, 3, three);
    cost = q->cost;
    write_all(q);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->cost, cost);
    CHECK_INT(q->kept_msgs, 2);
    CHECK_INT(q->messages, 0);
    CHECK_INT(wsp_queue_first(q), 1);
    CHECK_INT(wsp_queue_next(q), 3);
    push1(q, p, ba, &wire, "tail");
    wsp_queue_rewind(q);
    CHECK_INT(q->kept_msgs, 0);
    CHECK_INT(q->messages, 3);
    CHECK_INT(wsp_queue_next(q), 1);
    CHECK_INT(q->bytes, (apr_off_t)wire.n);
    w = offered(p, q);
    CHECK_WIRE(*w, wire, 0);
}

/* An acknowledgement frees kept messages up to its number, never one
 * not written whole yet. */
static void test_ack_frees(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    struct iovec vec[4];

    q->keep = 1;
    push1(q, p, ba, NULL, "one");
    push1(q, p, ba, NULL, "two");
    push(q, p, ba, NULL, 3, three);
    write_all(q);
    CHECK_INT(wsp_queue_ack(q, 1), 1);
    CHECK_INT(q->kept_msgs, 2);
    CHECK_INT(wsp_queue_first(q), 2);
    CHECK_INT(wsp_queue_ack(q, 1), 0);
    push1(q, p, ba, NULL, "four");
    /* 4 is pushed but not written: an ack of 9 frees 2 and 3 only */
    CHECK_INT(wsp_queue_ack(q, 9), 2);
    CHECK_INT(q->kept_msgs, 0);
    CHECK_INT(q->messages, 1);
    CHECK_INT(wsp_queue_first(q), 4);
    CHECK(wsp_queue_iov(q, vec, 4) == 1);
    write_all(q);
    CHECK_INT(wsp_queue_ack(q, 4), 1);
    CHECK_INT(q->cost, 0);
    CHECK(APR_BRIGADE_EMPTY(q->kept));
}

/* After a rewind a backend that processed 1..k gets k+1 on; a k it
 * cannot honour (beyond what was pushed, or below what was freed)
 * changes nothing. */
static void test_skip(apr_pool_t *p)
{
    apr_bucket_alloc_t *ba;
    wsp_queue_t *q = mkqueue(p, &ba);
    wire_t wire = { {0}, 0 };
    wire_t *w;

    q->keep = 1;
    push1(q, p, ba, NULL, "one");
    push(q, p, ba, NULL, 3, three);
    push1(q, p, ba, &wire, "three");
    write_all(q);
    push1(q, p, ba, &wire, "four");
    CHECK_INT(wsp_queue_ack(q, 1), 1);
    wsp_queue_rewind(q);
    CHECK_INT(wsp_queue_skip(q, 5), -1);
    CHECK_INT(wsp_queue_skip(q, 0), -1);
    CHECK_INT(q->messages, 3);
    CHECK_INT(wsp_queue_skip(q, 1), 0);
    CHECK_INT(wsp_queue_next(q), 2);
    CHECK_INT(wsp_queue_skip(q, 2), 0);
    CHECK_INT(wsp_queue_next(q), 3);
    CHECK_INT(q->messages, 2);
    CHECK_INT(q->bytes, (apr_off_t)wire.n);
    w = offered(p, q);
    CHECK_WIRE(*w, wire, 0);
    CHECK_INT(wsp_queue_skip(q, 4), 0);
    CHECK_INT(q->messages, 0);
    CHECK_INT(q->bytes, 0);
    CHECK_INT(q->cost, 0);
}

WSP_TEST_MAIN(
    RUN(test_empty);
    RUN(test_push_counts);
    RUN(test_consume_whole_messages);
    RUN(test_partial_frame);
    RUN(test_consume_across_frames);
    RUN(test_fragments_held_until_fin);
    RUN(test_rewind_partial_frame);
    RUN(test_rewind_replays_message);
    RUN(test_rewind_at_fragment_boundary);
    RUN(test_rewind_skips_finished);
    RUN(test_rewind_after_finished_and_fragment);
    RUN(test_rewind_twice);
    RUN(test_iov_spans_buckets);
    RUN(test_clear);
    RUN(test_frame_cost);
    RUN(test_bytes_exact_throughout);
    RUN(test_numbers);
    RUN(test_keep_rewind);
    RUN(test_ack_frees);
    RUN(test_skip);
)
