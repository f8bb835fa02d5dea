/* Client messages on their way to a backend. Whole messages only, each a
 * run of encoded frames (one bucket per frame, the last with FIN). A frame
 * is released when written, a message when its last frame is written; on
 * failover everything not released is written again, from the first byte
 * of its message. bytes counts what is held, against the buffer cap. */
#ifndef WSP_QUEUE_H
#define WSP_QUEUE_H

#include <apr_buckets.h>
#include <apr_network_io.h>

typedef struct {
    apr_bucket_brigade *pending;  /* frames not completely written */
    apr_bucket_brigade *written;  /* written frames of an unfinished message */
    apr_size_t head_off;          /* bytes of the first pending frame sent */
    apr_off_t bytes;              /* bytes held in both brigades */
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
