/* Client messages on their way to a backend; see include/wsp_queue.h.
 * Invariant: written holds the already written frames of the message at
 * the head of pending, and nothing else, so a rewind replays exactly the
 * one message that was cut and never one that was finished. */

#include "wsp_queue.h"

void wsp_queue_init(wsp_queue_t *q, apr_pool_t *p, apr_bucket_alloc_t *ba)
{
    q->pending = apr_brigade_create(p, ba);
    q->written = apr_brigade_create(p, ba);
    q->head_off = 0;
    q->bytes = 0;
    q->cost = 0;
    q->messages = 0;
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
    if (!wsp_frame_fin(b)) {
        /* kept until the message ends: a failover replays it whole */
        APR_BRIGADE_INSERT_TAIL(q->written, b);
        return;
    }
    q->bytes -= (apr_off_t)b->length;
    q->cost -= (apr_off_t)wsp_frame_cost(b->length);
    apr_bucket_destroy(b);
    while (!APR_BRIGADE_EMPTY(q->written)) {
        b = APR_BRIGADE_FIRST(q->written);
        q->bytes -= (apr_off_t)b->length;
        q->cost -= (apr_off_t)wsp_frame_cost(b->length);
        apr_bucket_delete(b);
    }
    q->messages--;
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
    APR_BRIGADE_PREPEND(q->pending, q->written);
    q->head_off = 0;
}

void wsp_queue_clear(wsp_queue_t *q)
{
    apr_brigade_cleanup(q->pending);
    apr_brigade_cleanup(q->written);
    q->head_off = 0;
    q->bytes = 0;
    q->cost = 0;
    q->messages = 0;
}
