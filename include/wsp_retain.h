/* Backend messages kept for a client that may resume (DESIGN 7). Each
 * message the client is given is numbered from 1 and copied here, whole,
 * as the frames it was sent as. A message is "written" once every byte
 * of it left for the client's socket; written ones are kept within a
 * byte limit (WSPersistResumeBuffer, oldest dropped first), the others
 * until they are written or the client acknowledges them. A resume sends
 * the new connection every kept message after the client's count. */
#ifndef WSP_RETAIN_H
#define WSP_RETAIN_H

#include <apr_buckets.h>
#include <apr_ring.h>

typedef struct wsp_rmsg_t wsp_rmsg_t;

struct wsp_rmsg_t {
    APR_RING_ENTRY(wsp_rmsg_t) link;
    apr_uint64_t n;               /* its number in the session */
    apr_size_t len;               /* its frames' bytes, after the record */
    apr_off_t cost;               /* what the record holds in memory */
    apr_off_t end;                /* offset of its last byte + 1 in the
                                   * current connection's output; -1: not
                                   * given to this connection */
};

APR_RING_HEAD(wsp_rmsg_ring, wsp_rmsg_t);

typedef struct {
    struct wsp_rmsg_ring ring;    /* oldest first */
    apr_bucket_alloc_t *ba;
    wsp_rmsg_t *next_w;           /* the oldest not known written, NULL:
                                   * none */
    apr_uint64_t last;            /* number of the newest message */
    apr_uint64_t written;         /* 1..written are written (or the
                                   * client has them) */
    apr_off_t cost;               /* every record */
    apr_off_t wcost;              /* records numbered <= written */
    apr_off_t limit;              /* cap of wcost */
    apr_size_t count;
} wsp_retain_t;

void wsp_retain_init(wsp_retain_t *rt, apr_bucket_alloc_t *ba,
                     apr_off_t limit);

/* The next message for the client: its frames (moved out of msg, which is
 * left empty) become a record numbered last + 1, not yet on any
 * connection. */
wsp_rmsg_t *wsp_retain_push(wsp_retain_t *rt, apr_bucket_brigade *msg);

/* The record's frames. */
const char *wsp_rmsg_data(const wsp_rmsg_t *m);

/* The record after m, NULL: none. */
wsp_rmsg_t *wsp_rmsg_next(const wsp_retain_t *rt, const wsp_rmsg_t *m);

/* The current connection has written its first `flushed` bytes: records
 * that end there are written; written ones past the limit are freed. */
void wsp_retain_flushed(wsp_retain_t *rt, apr_off_t flushed);

/* The client has messages 1..n (its wsp-ack:n): they are freed. n
 * beyond the newest counts as the newest. */
void wsp_retain_ack(wsp_retain_t *rt, apr_uint64_t n);

/* Bytes of records not known written: what a detached session holds
 * for its client. */
apr_off_t wsp_retain_unwritten(const wsp_retain_t *rt);

#define WSP_RESUME_OK      0
#define WSP_RESUME_BEYOND  (-1)   /* n is beyond the newest message */
#define WSP_RESUME_LOST    (-2)   /* message n + 1 is no longer kept */

/* A new connection resumes: with has_n, after message n (1..n are freed
 * and count as written), else after the last one known written. Every
 * record forgets its old connection's offset; *from is the first to send
 * again (NULL: none). On failure nothing changes. */
int wsp_retain_resume(wsp_retain_t *rt, int has_n, apr_uint64_t n,
                      wsp_rmsg_t **from);

/* Free every record. */
void wsp_retain_clear(wsp_retain_t *rt);

#endif /* WSP_RETAIN_H */
