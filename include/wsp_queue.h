/* Client messages on their way to a backend. Whole messages only, each a
 * run of encoded frames (one bucket per frame, the last with FIN). A frame
 * is released when written, a message when its last frame is written; on
 * failover everything not released is written again, from the first byte
 * of its message. bytes counts what is held; cost adds what each frame's
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

typedef struct {
    apr_bucket_brigade *pending;  /* frames not completely written */
    apr_bucket_brigade *written;  /* written frames of an unfinished message */
    apr_size_t head_off;          /* bytes of the first pending frame sent */
    apr_off_t bytes;              /* bytes held in both brigades */
    apr_off_t cost;               /* wsp_frame_cost() of each frame */
    apr_size_t messages;          /* whole messages held */
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

/* The backend failed: write every held message again from its start. */
void wsp_queue_rewind(wsp_queue_t *q);

/* Drop everything (the pipe ends). */
void wsp_queue_clear(wsp_queue_t *q);

#endif /* WSP_QUEUE_H */
