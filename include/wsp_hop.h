/* One hop of a pipe: a peer connection with its frame reader, the control
 * frames owed to it, its close state, its ping timer and its output. One
 * type serves the client, the current backend and the second backend of
 * a move (a move's switch swaps two hops); what differs is the transport,
 * httpd's connection filters for the client, a wsp_bconn_t for backends. */
#ifndef WSP_HOP_H
#define WSP_HOP_H

#include "httpd.h"
#include "apr_buckets.h"
#include "util_filter.h"

#include "wsp_frame.h"
#include "wsp_queue.h"
#include "wsp_backend.h"

/* Frames arriving on one hop, gathered into whole messages. Payload is
 * copied into frames of our own as it arrives, never allocated for a
 * length a header claims, and small fragments share one frame: what a
 * message holds in memory is about its payload, however it was cut. */
typedef struct {
    wsp_reader_t rd;
    int in_payload;
    unsigned char cpay[WSP_CONTROL_MAX];   /* control frame payload */
    apr_bucket_alloc_t *ba;                /* data frames are built here */
    int remask;                            /* toward a backend: mask */
    unsigned char *chunk;                  /* frame being filled: header
                                            * room, then payload */
    apr_size_t chunk_cap;                  /* its payload room */
    apr_size_t chunk_len;                  /* payload in it so far */
    unsigned char key[4];                  /* its mask key */
    int msg_op;                            /* opcode of this message */
    int emitted;                           /* frames of it built already */
    apr_bucket_brigade *msg;               /* frames of this message */
    apr_off_t msg_bytes;                   /* their wsp_frame_cost() */
    apr_off_t msg_wire;                    /* wire bytes of it, headers
                                            * too: an endless run of empty
                                            * fragments hits the cap */
    apr_off_t wire_max;                    /* 0: no cap */
    int drop;                              /* discard this message */
    apr_uint64_t *rng;                     /* the pipe's mask keys */
} wsp_hop_in_t;

/* Control frames owed to a peer. At most one of each kind waits, a newer
 * ping's pong replacing an older one (RFC 6455 5.5.3): what a peer that
 * pings and never reads can make us hold is this, however long it goes
 * on. A close, once owed, is never dropped and nothing follows it. */
typedef struct {
    unsigned char pong[WSP_CONTROL_MAX];
    apr_size_t pong_len;
    int pong_due;
    int ping_due;
    unsigned char close[WSP_CONTROL_MAX];
    apr_size_t close_len;
    int close_due;
    int close_out;                         /* the close was handed on */
} wsp_owed_t;

typedef enum {
    WSP_HOP_CLIENT,
    WSP_HOP_BACKEND
} wsp_hop_kind_e;

typedef struct {
    wsp_hop_kind_e kind;
    wsp_hop_in_t in;                       /* frames from the peer */
    wsp_owed_t owed;                       /* control frames owed to it */
    unsigned char ctrl[WSP_FRAME_HDR_MAX + WSP_CONTROL_MAX];
    apr_size_t ctrl_len;                   /* a backend's control frame */
    apr_size_t ctrl_off;                   /* being written */
    int want_write;
    int close_sent;
    int close_rcvd;
    int close_code;                        /* what the peer sent */
    char close_reason[WSP_CONTROL_MAX + 1];
    apr_time_t last_rx;                    /* the ping timer */
    apr_time_t ping_sent;
    apr_time_t deadline;                   /* a backend's handshake; a
                                            * retiring one's 1001, then its
                                            * close reply */

    /* a backend hop */
    wsp_backend_t *be;
    wsp_bconn_t *bc;
    int retiring;                          /* the second backend of a move
                                            * after the switch: the old */
    int close_pending;                     /* code to send after the queue */
    const char *close_pending_reason;
    const char *ended;                     /* its end, seen while the old
                                            * backend retired: held */
    int write_failed;                      /* reset: read up to the end,
                                            * write nothing more */
    int unread;                            /* input left in the kernel
                                            * since the last read */

    /* the client hop: lives in its request's pool, replaced on a
     * takeover */
    request_rec *r;
    conn_rec *c;
    apr_socket_t *sock;                    /* NULL on an HTTP/2 stream */
    apr_file_t *signal;                    /* an HTTP/2 stream's input is
                                            * polled on mod_http2's pipe */
    ap_filter_t *core_out;
    apr_bucket_brigade *ibb;
    apr_bucket_brigade *out;               /* frames not yet passed on */
    apr_bucket_brigade *tmp;
    apr_bucket_brigade *spare;             /* the next backend's messages
                                            * are built here after a move */
    apr_off_t out_bytes;                   /* wsp_frame_cost() of out */
    apr_off_t ctrl_out;                    /* control bytes put in out since
                                            * it was last empty */
    apr_off_t out_total;                   /* bytes ever put in out */
    apr_off_t out_passed;                  /* ... passed to the filters */
    int upgraded;
    int h2;                                /* a stream of mod_http2 (RFC
                                            * 8441): its filters end in
                                            * mod_http2's, not the core's */
    int plain;                             /* no TLS on the connection */
    int direct;                            /* plain, and the core holds no
                                            * input: read the socket */
    int more_input;                        /* stopped reading early */
    int gone;
} wsp_hop_t;

/* Events of the hop reader. */
#define WSP_EV_NONE     0      /* input used up */
#define WSP_EV_DATA     1      /* a data frame header: decide, then fill */
#define WSP_EV_FRAME    2      /* a data frame done, its message is not */
#define WSP_EV_MESSAGE  3      /* in->msg holds a whole message */
#define WSP_EV_CONTROL  4      /* a control frame in in->cpay */

/* A mask key from the pipe's generator. */
void wsp_rng_key(apr_uint64_t *rng, unsigned char key[4]);

void wsp_hop_init(wsp_hop_in_t *in, wsp_from_e from, apr_off_t max,
                  apr_bucket_alloc_t *ba, apr_bucket_brigade *msg,
                  apr_uint64_t *rng);
void wsp_hop_drop(wsp_hop_in_t *in);
int wsp_hop_mid_message(const wsp_hop_in_t *in);
int wsp_hop_pending(const wsp_hop_in_t *in);
apr_size_t wsp_hop_total(const wsp_hop_in_t *in);
int wsp_hop_step(wsp_hop_in_t *in,
                 const unsigned char **data, apr_size_t *len);
void wsp_owe(wsp_owed_t *o, int opcode, const unsigned char *payload,
             apr_size_t len);
int wsp_hop_next_ctrl(wsp_hop_t *hop, apr_uint64_t *rng);
void wsp_log_text(char *out, apr_size_t size, const char *in,
                  apr_size_t len);
const char *wsp_close_text(int code);

#endif /* WSP_HOP_H */
