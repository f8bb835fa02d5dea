/* The pipe: one client id, its client connection, its current backend and
 * the buffer between them. A non-blocking state machine: a driver polls
 * what wsp_pipe_want() asks for and calls wsp_pipe_run() on readiness or
 * when the wake-up time passes. */
#ifndef WSP_PIPE_H
#define WSP_PIPE_H

#include "httpd.h"
#include "apr_buckets.h"
#include "apr_poll.h"
#include "util_filter.h"

#include "mod_ws_persist.h"
#include "wsp_frame.h"
#include "wsp_queue.h"
#include "wsp_backend.h"

typedef enum {
    WSP_PH_CONNECT,        /* first backend, client not upgraded yet */
    WSP_PH_LIVE,           /* relaying */
    WSP_PH_FAILOVER,       /* between backends, buffering the client */
    WSP_PH_DONE,           /* over: the driver ends the request */
    WSP_PH_FAILED          /* no backend at connect time: 503 */
} wsp_phase_e;

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

/* The client connection of a pipe; replaced on a duplicate in replace
 * mode. Lives in the request's pool. */
typedef struct {
    request_rec *r;
    conn_rec *c;
    apr_socket_t *sock;
    ap_filter_t *core_out;
    wsp_hop_in_t in;                       /* client frames */
    apr_bucket_brigade *ibb;
    apr_bucket_brigade *out;               /* frames not yet passed on */
    apr_bucket_brigade *tmp;
    apr_bucket_brigade *spare;             /* the next backend's messages
                                            * are built here after a move */
    apr_off_t out_bytes;                   /* wsp_frame_cost() of out */
    apr_off_t ctrl_out;                    /* control bytes put in out since
                                            * it was last empty */
    wsp_owed_t owed;                       /* its pong */
    int upgraded;
    int plain;                             /* no TLS on the connection */
    int more_input;                        /* stopped reading early */
    int want_write;
    int gone;
    int close_sent;
    int close_rcvd;
    int close_code;                        /* what the client sent */
    char close_reason[WSP_CONTROL_MAX + 1];
    apr_time_t last_rx;
    apr_time_t ping_sent;
} wsp_client_t;

typedef enum {
    WSP_HANDOVER_NONE = 0,
    WSP_HANDOVER_ASKED,
    WSP_HANDOVER_HANDING,              /* the driver lets its client go */
    WSP_HANDOVER_DONE
} wsp_handover_e;

typedef struct wsp_pipe_t wsp_pipe_t;

struct wsp_pipe_t {
    apr_pool_t *pool;                  /* the pipe's own, outlives requests */
    apr_allocator_t *allocator;
    apr_bucket_alloc_t *ba;            /* client messages toward backends */
    server_rec *s;
    const char *id;
    const char *client_ip;
    const wsp_dir_conf_t *conf;
    wsp_pool_opts_t opts;
    wsp_phase_e phase;

    /* what every backend handshake carries */
    const char *rest;                  /* path rest and query */
    const char *offered;               /* client's Sec-WebSocket-Protocol */
    const char *protocol;              /* pinned by the first backend */
    int pinned;                        /* protocol is settled (under the
                                        * registry's lock) */
    apr_pool_t *rpool;                 /* what the current client's
                                        * request gives every backend */
    apr_table_t *fwd;                  /* forwarded headers */
    int connections;                   /* backend handshakes completed */

    wsp_client_t *client;
    wsp_queue_t q;                     /* client messages toward backends */

    /* the current backend */
    wsp_backend_t *be;
    wsp_bconn_t *bc;
    wsp_hop_in_t bin;                  /* backend frames */
    unsigned char ctrl[WSP_FRAME_HDR_MAX + WSP_CONTROL_MAX];
    apr_size_t ctrl_len;               /* the control frame being written */
    apr_size_t ctrl_off;
    wsp_owed_t bowed;                  /* what waits for a frame boundary */
    int b_want_write;
    int b_close_pending;               /* code to send after the queue */
    const char *b_close_reason;
    int b_close_sent;
    int b_close_rcvd;
    const char *b_ended;               /* its end, seen while the old
                                        * backend retired: held */
    apr_time_t b_last_rx;
    apr_time_t b_ping_sent;

    /* moving off a draining backend: the replacement ("aux") connects
     * beside the current backend; at a message boundary they swap and the
     * old one, now aux and retiring, is closed with 1001 while what it
     * still sends is relayed */
    wsp_backend_t *abe;
    wsp_bconn_t *abc;
    int aux_retiring;
    wsp_hop_in_t ain;                  /* the retiring backend's frames */
    unsigned char actrl[WSP_FRAME_HDR_MAX + WSP_CONTROL_MAX];
    apr_size_t actrl_len;
    apr_size_t actrl_off;
    int a_want_write;
    int a_close_sent;
    apr_time_t a_last_rx;
    apr_time_t aux_deadline;           /* connecting: the handshake's;
                                        * retiring: the 1001's, then the
                                        * close reply's */
    apr_time_t move_at;                /* no replacement: try again then */
    wsp_backend_t *req_be;             /* whom a handshake is built for */

    /* timers */
    apr_time_t deadline;               /* for a usable backend */
    apr_time_t attempt_deadline;       /* for the current handshake */
    apr_time_t retry_at;               /* no backend before this */
    int full_at_outage;                /* the failover began with a full
                                        * buffer: backpressure, not 1013 */
    int ending;                        /* session over, closing both hops */
    apr_time_t close_deadline;

    apr_uint64_t rng;                  /* mask keys */

    /* the driver hears of a backend socket before it is closed, so it can
     * take it out of its pollset while the descriptor is still valid */
    void (*on_bclose)(void *baton, apr_socket_t *sock);
    void *driver_baton;

    /* replace mode: another request takes the pipe over */
    volatile wsp_handover_e handover;
    void (*wake)(void *baton);
    void *wake_baton;
};

/* The allocator all pipes of this process share (child_init). */
apr_status_t wsp_pipe_child_init(apr_pool_t *pchild);

/* A new pipe for request r (its own pool). */
apr_status_t wsp_pipe_create(wsp_pipe_t **out, request_rec *r,
                             const wsp_dir_conf_t *conf, const char *id);

/* Attach r's connection as the pipe's client (not upgraded yet). */
void wsp_pipe_attach(wsp_pipe_t *p, request_rec *r);

/* The 101 went out: start reading the client. */
void wsp_pipe_upgraded(wsp_pipe_t *p);

/* Let go of the client (a newer connection takes over): close it with
 * 1008 and forget it. */
void wsp_pipe_detach(wsp_pipe_t *p);

/* Replace mode, for the driver: 1 when a newer connection asked for the
 * pipe and it can go now; the driver then stops polling the pipe's
 * sockets and calls wsp_pipe_handover_end(), which lets the client go
 * and hands the pipe to the claimer. The pipe is not the driver's after
 * that. */
int wsp_pipe_handover_begin(wsp_pipe_t *p);
void wsp_pipe_handover_end(wsp_pipe_t *p);

/* What to poll: events on the client socket, the backend socket (NULL
 * when none) and its events, a second backend socket while the pipe moves
 * off a draining backend, and when to call again regardless. */
void wsp_pipe_want(wsp_pipe_t *p, apr_int16_t *cev, apr_socket_t **bsock,
                   apr_int16_t *bev, apr_socket_t **asock, apr_int16_t *aev,
                   apr_time_t *wake_at);

/* Do everything the sockets and timers allow. */
void wsp_pipe_run(wsp_pipe_t *p, apr_int16_t crev, apr_int16_t brev,
                  apr_int16_t arev);

/* Whether the pipe's backend is being drained and the pipe has not begun
 * to move (a driver wakes such pipes after an administrator's action). */
int wsp_pipe_should_move(const wsp_pipe_t *p);

/* The server stops: close both hops with 1001, as far as the sockets take
 * it without waiting. */
void wsp_pipe_going_away(wsp_pipe_t *p);

/* Free the pipe (backend connection, buffers, pool). */
void wsp_pipe_destroy(wsp_pipe_t *p);

/* For log lines. */
const char *wsp_pipe_backend_url(const wsp_pipe_t *p);

/* Every line names the client id, its address and the backend. */
#define WSP_LOG(p, level, rv, fmt, ...) \
    ap_log_error(APLOG_MARK, level, rv, (p)->s, \
                 "ws_persist: client %s (%s) backend %s: " fmt, (p)->id, \
                 (p)->client_ip, wsp_pipe_backend_url(p), ##__VA_ARGS__)

#endif /* WSP_PIPE_H */
