/* Client messages on their way to a backend. Whole messages only, each a
 * run of encoded frames (one bucket per frame, the last with FIN). A frame
 * is released when written, a message when its last frame is written (or
 * acknowledged, see keep); on failover everything not released is written
 * again, from the first byte of its message. bytes counts what is to be
 * written; cost adds what each frame's
 * bucket costs in memory beside its bytes, and is what the buffer cap
 * charges, so a stream of tiny messages is capped by what it holds. */
#ifndef WSP_QUEUE_H
#define WSP_QUEUE_H

#include <apr_buckets.h>
#include <apr_network_io.h>

/* What a frame of len bytes holds in memory as a heap bucket: the bucket
 * and its heap header (two small nodes of the bucket allocator) and its
 * data, a small node up to about 100 bytes, above that a block of the APR
 * allocator, rounded up to 4 KB and at least 8 KB. Caps charge this, so
 * that a stream of tiny frames is capped by what it really takes. */
apr_size_t wsp_frame_cost(apr_size_t len);

/* Messages are numbered from 1 in the order they were pushed (DESIGN 7).
 * With keep set, a message completely written is kept until a backend
 * acknowledges it, and a rewind writes the kept ones again too; kept
 * bytes count in cost, not in bytes (they are not to be written now). */
typedef struct {
    apr_bucket_brigade *pending;  /* frames not completely written */
    apr_bucket_brigade *written;  /* written frames of an unfinished message */
    apr_bucket_brigade *kept;     /* written whole, not acknowledged */
    apr_size_t head_off;          /* bytes of the first pending frame sent */
    apr_off_t bytes;              /* bytes in pending and written */
    apr_off_t cost;               /* wsp_frame_cost() of each frame held,
                                   * kept ones included */
    apr_size_t messages;          /* whole messages in pending */
    apr_size_t kept_msgs;         /* messages in kept */
    apr_uint64_t pushed;          /* number of the last message pushed */
    apr_uint64_t done;            /* ... of the last completely written */
    int keep;
} wsp_queue_t;

void wsp_queue_init(wsp_queue_t *q, apr_pool_t *p, apr_bucket_alloc_t *ba);

/* Append a whole message (frames moved out of msg). */
void wsp_queue_push(wsp_queue_t *q, apr_bucket_brigade *msg);

/* Fill up to nvec iovecs with what to write next; returns how many. */
int wsp_queue_iov(wsp_queue_t *q, struct iovec *vec, int nvec);

/* n bytes of what wsp_queue_iov() offered were written. */
void wsp_queue_consumed(wsp_queue_t *q, apr_size_t n);

/* Whether the next byte to write starts a frame (control frames may go). */
int wsp_queue_at_frame_boundary(const wsp_queue_t *q);

/* Whether no message is partly written (another backend may take the
 * rest of the queue). */
int wsp_queue_at_message_boundary(const wsp_queue_t *q);

/* The backend failed: write every held message again from its start,
 * the kept ones first. */
void wsp_queue_rewind(wsp_queue_t *q);

/* The number of the next message to be written. */
apr_uint64_t wsp_queue_next(const wsp_queue_t *q);

/* The number of the oldest message still held (kept or pending), or
 * wsp_queue_next() when none is. */
apr_uint64_t wsp_queue_first(const wsp_queue_t *q);

/* A backend has processed messages 1..k: the kept ones up to k are
 * freed; k beyond what was written whole frees what was. Returns how
 * many were freed. */
apr_size_t wsp_queue_ack(wsp_queue_t *q, apr_uint64_t k);

/* Right after a rewind, a new backend has processed messages 1..k
 * already: they are not written to it. Returns 0, or -1 (nothing
 * changed) when k is beyond the last message pushed or below the oldest
 * one held (freed already: they cannot be sent again). */
int wsp_queue_skip(wsp_queue_t *q, apr_uint64_t k);

/* Drop everything (the pipe ends). */
void wsp_queue_clear(wsp_queue_t *q);

#endif /* WSP_QUEUE_H */
