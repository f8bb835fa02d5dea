/* Client messages on their way to a backend; see include/wsp_queue.h.
 * Invariants: written holds the already written frames of the message at
 * the head of pending, and nothing else, so a rewind replays exactly the
 * one message that was cut and never one that was finished; kept holds
 * the whole messages done - kept_msgs + 1 .. done, pending the messages
 * done + 1 .. pushed. */

#include "wsp_queue.h"

void wsp_queue_init(wsp_queue_t *q, apr_pool_t *p, apr_bucket_alloc_t *ba)
{
    q->pending = apr_brigade_create(p, ba);
    q->written = apr_brigade_create(p, ba);
    q->kept = apr_brigade_create(p, ba);
    q->head_off = 0;
    q->bytes = 0;
    q->cost = 0;
    q->messages = 0;
    q->kept_msgs = 0;
    q->pushed = 0;
    q->done = 0;
    q->keep = 0;
}

apr_size_t wsp_frame_cost(apr_size_t len)
{
    apr_size_t n = len + 16;          /* the bucket allocator's node header */

    if (n <= 128) {
        n = 128;
    }
    else {
        n = APR_ALIGN(n + 40, 4096);  /* the allocator's memnode header */
        if (n < 8192) {
            n = 8192;
        }
    }
    return n + 2 * 128;
}

/* Length of a frame bucket; heap buckets know it, others learn it here. */
static apr_size_t wsp_frame_len(apr_bucket *b)
{
    const char *data;
    apr_size_t len;

    if (b->length == (apr_size_t)-1) {
        apr_bucket_read(b, &data, &len, APR_BLOCK_READ);
    }
    return b->length;
}

static int wsp_frame_fin(apr_bucket *b)
{
    const char *data;
    apr_size_t len;

    if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS
        || len == 0) {
        return 0;
    }
    return (data[0] & 0x80) != 0;
}

void wsp_queue_push(wsp_queue_t *q, apr_bucket_brigade *msg)
{
    apr_bucket *b;

    if (APR_BRIGADE_EMPTY(msg)) {
        return;
    }
    for (b = APR_BRIGADE_FIRST(msg); b != APR_BRIGADE_SENTINEL(msg);
         b = APR_BUCKET_NEXT(b)) {
        q->bytes += (apr_off_t)wsp_frame_len(b);
        q->cost += (apr_off_t)wsp_frame_cost(b->length);
    }
    APR_BRIGADE_CONCAT(q->pending, msg);
    q->messages++;
    q->pushed++;
}

int wsp_queue_iov(wsp_queue_t *q, struct iovec *vec, int nvec)
{
    apr_bucket *b;
    apr_size_t off = q->head_off;
    const char *data;
    apr_size_t len;
    int n = 0;

    for (b = APR_BRIGADE_FIRST(q->pending);
         n < nvec && b != APR_BRIGADE_SENTINEL(q->pending);
         b = APR_BUCKET_NEXT(b)) {
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS) {
            break;
        }
        if (len > off) {
            vec[n].iov_base = (void *)(data + off);
            vec[n].iov_len = len - off;
            n++;
        }
        off = 0;
    }
    return n;
}

/* The first pending frame is completely written. */
static void wsp_queue_frame_done(wsp_queue_t *q)
{
    apr_bucket *b = APR_BRIGADE_FIRST(q->pending);

    APR_BUCKET_REMOVE(b);
    /* in written until the message ends: a failover replays it whole */
    APR_BRIGADE_INSERT_TAIL(q->written, b);
    if (!wsp_frame_fin(b)) {
        return;
    }
    q->messages--;
    q->done++;
    for (b = APR_BRIGADE_FIRST(q->written);
         b != APR_BRIGADE_SENTINEL(q->written); b = APR_BUCKET_NEXT(b)) {
        q->bytes -= (apr_off_t)b->length;
    }
    if (q->keep) {
        APR_BRIGADE_CONCAT(q->kept, q->written);
        q->kept_msgs++;
        return;
    }
    while (!APR_BRIGADE_EMPTY(q->written)) {
        b = APR_BRIGADE_FIRST(q->written);
        q->cost -= (apr_off_t)wsp_frame_cost(b->length);
        apr_bucket_delete(b);
    }
}

/* Free the first whole message of bb; returns its bytes. */
static apr_off_t wsp_queue_drop_first(wsp_queue_t *q, apr_bucket_brigade *bb)
{
    apr_off_t n = 0;

    while (!APR_BRIGADE_EMPTY(bb)) {
        apr_bucket *b = APR_BRIGADE_FIRST(bb);
        int fin = wsp_frame_fin(b);

        n += (apr_off_t)b->length;
        q->cost -= (apr_off_t)wsp_frame_cost(b->length);
        apr_bucket_delete(b);
        if (fin) {
            break;
        }
    }
    return n;
}

void wsp_queue_consumed(wsp_queue_t *q, apr_size_t n)
{
    while (n > 0 && !APR_BRIGADE_EMPTY(q->pending)) {
        apr_size_t rest = wsp_frame_len(APR_BRIGADE_FIRST(q->pending))
                          - q->head_off;
        if (n < rest) {
            q->head_off += n;
            return;
        }
        n -= rest;
        q->head_off = 0;
        wsp_queue_frame_done(q);
    }
}

int wsp_queue_at_frame_boundary(const wsp_queue_t *q)
{
    return q->head_off == 0 || APR_BRIGADE_EMPTY(q->pending);
}

int wsp_queue_at_message_boundary(const wsp_queue_t *q)
{
    return q->head_off == 0 && APR_BRIGADE_EMPTY(q->written);
}

void wsp_queue_rewind(wsp_queue_t *q)
{
    apr_bucket *b;

    APR_BRIGADE_PREPEND(q->pending, q->written);
    for (b = APR_BRIGADE_FIRST(q->kept);
         b != APR_BRIGADE_SENTINEL(q->kept); b = APR_BUCKET_NEXT(b)) {
        q->bytes += (apr_off_t)b->length;
    }
    APR_BRIGADE_PREPEND(q->pending, q->kept);
    q->messages += q->kept_msgs;
    q->done -= q->kept_msgs;
    q->kept_msgs = 0;
    q->head_off = 0;
}

apr_uint64_t wsp_queue_next(const wsp_queue_t *q)
{
    return q->done + 1;
}

apr_uint64_t wsp_queue_first(const wsp_queue_t *q)
{
    return q->done + 1 - q->kept_msgs;
}

apr_size_t wsp_queue_ack(wsp_queue_t *q, apr_uint64_t k)
{
    apr_size_t n = 0;

    while (q->kept_msgs > 0 && wsp_queue_first(q) <= k) {
        wsp_queue_drop_first(q, q->kept);
        q->kept_msgs--;
        n++;
    }
    return n;
}

int wsp_queue_skip(wsp_queue_t *q, apr_uint64_t k)
{
    if (k > q->pushed || k + 1 < wsp_queue_first(q)) {
        return -1;
    }
    wsp_queue_ack(q, k);
    while (q->done < k) {
        q->bytes -= wsp_queue_drop_first(q, q->pending);
        q->messages--;
        q->done++;
    }
    return 0;
}

void wsp_queue_clear(wsp_queue_t *q)
{
    apr_brigade_cleanup(q->pending);
    apr_brigade_cleanup(q->written);
    apr_brigade_cleanup(q->kept);
    q->head_off = 0;
    q->bytes = 0;
    q->cost = 0;
    q->messages = 0;
    q->kept_msgs = 0;
}
