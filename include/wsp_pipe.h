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
#include "wsp_hop.h"
#include "wsp_retain.h"

/* The pipe's state, read from one field; every change goes through one
 * function that logs it (LogLevel ws_persist:trace1). */
typedef enum {
    WSP_ST_CONNECTING,     /* first backend, client not upgraded yet */
    WSP_ST_LIVE,           /* relaying */
    WSP_ST_FAILING_OVER,   /* between backends, buffering the client */
    WSP_ST_MOVING,         /* relaying while a replacement for a draining
                            * backend connects beside it */
    WSP_ST_DETACHED,       /* the client's connection dropped: the backend
                            * stays, its messages kept for a resume */
    WSP_ST_CLOSING,        /* session over: the closing handshakes */
    WSP_ST_DONE,           /* over: the driver ends the request */
    WSP_ST_FAILED          /* no backend at connect time: 503 */
} wsp_state_e;

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
    wsp_state_e state;

    /* what every backend handshake carries */
    const char *rest;                  /* path rest and query */
    const char *offered;               /* client's Sec-WebSocket-Protocol */
    const char *protocol;              /* pinned by the first backend */
    int pinned;                        /* protocol is settled (under the
                                        * registry's lock) */
    apr_pool_t *rpool;                 /* a newer client's fields, made
                                        * at the first takeover */
    apr_table_t *fwd;                  /* forwarded headers */
    int connections;                   /* backend handshakes completed */

    wsp_hop_t *client;
    wsp_queue_t q;                     /* client messages toward backends */

    /* the current backend, and the second one of a move: the replacement
     * connects beside the draining backend; at a message boundary the two
     * swap and the old one retires (1001) while what it still sends is
     * relayed */
    wsp_hop_t hops[2];
    wsp_hop_t *b;
    wsp_hop_t *b2;                     /* b2->bc NULL: no move */
    apr_time_t move_at;                /* no replacement: try again then */
    apr_time_t quiesce_at;             /* WSPersistAck: since then no new
                                        * message goes to the draining
                                        * backend, whose acknowledgements
                                        * the move waits for */
    wsp_backend_t *req_be;             /* whom a handshake is built for */

    /* timers */
    apr_time_t deadline;               /* for a usable backend */
    apr_time_t retry_at;               /* no backend before this */
    int full_at_outage;                /* the failover began with a full
                                        * buffer: backpressure, not 1013 */
    apr_time_t close_deadline;

    apr_uint64_t rng;                  /* mask keys */

    /* the driver hears of a backend socket before it is closed, so it can
     * take it out of its pollset while the descriptor is still valid */
    void (*on_bclose)(void *baton, apr_socket_t *sock);
    void *driver_baton;

    /* WSPersistResumeWindow (DESIGN 7): backend messages are built in
     * the pipe's memory and kept for the client; a client that drops
     * without a close frame leaves the session detached until then */
    int resumable;
    wsp_retain_t rt;
    apr_bucket_brigade *rspare;        /* the spare message brigade a move
                                        * swaps in (cl->spare otherwise) */
    apr_time_t detach_until;           /* 0: not detached */
    int detached;                      /* for the registry, under its
                                        * lock */

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

/* The session has no client connection (it dropped; a resume may come). */
int wsp_pipe_detached(const wsp_pipe_t *p);

/* A new connection resumes the session, attached already: the kept
 * messages after the client's count n (has_n 0: after what was written
 * to the old connection) go out first. Returns WSP_RESUME_OK, or why it
 * cannot (WSP_RESUME_BEYOND, WSP_RESUME_LOST): the session is over, the
 * client gets 4410 and the backend 1001. */
int wsp_pipe_resume(wsp_pipe_t *p, int has_n, apr_uint64_t n);

/* The session is over before it began for this connection (4410). */
void wsp_pipe_gone(wsp_pipe_t *p, const char *why);

/* Replace mode, for the driver: 1 when a newer connection asked for the
 * pipe and it can go now; the driver then stops polling the pipe's
 * sockets and calls wsp_pipe_handover_end(), which lets the client go
 * and hands the pipe to the claimer. The pipe is not the driver's after
 * that. */
int wsp_pipe_handover_begin(wsp_pipe_t *p);
int wsp_pipe_handover_asked(const wsp_pipe_t *p);
void wsp_pipe_handover_end(wsp_pipe_t *p);

/* The sockets of a pipe a driver polls. */
#define WSP_SOCK_CLIENT  0
#define WSP_SOCK_BACKEND 1
#define WSP_SOCK_SECOND  2         /* the second backend of a move */
#define WSP_SOCKS        3

/* What to poll: each socket (NULL: none) with its events (0: none), and
 * when to call wsp_pipe_run() regardless (0: only on events). A client on
 * an HTTP/2 stream has no socket: its input is polled on a file (a pipe
 * mod_http2 signals), for APR_POLLIN only, in the client's slot. */
typedef struct {
    apr_socket_t *sock[WSP_SOCKS];
    apr_file_t *client_file;
    apr_int16_t events[WSP_SOCKS];
    apr_time_t wake_at;
} wsp_want_t;

void wsp_pipe_want(wsp_pipe_t *p, wsp_want_t *want);

/* Do everything the sockets (rev: the events poll returned for each) and
 * timers allow. */
void wsp_pipe_run(wsp_pipe_t *p, const apr_int16_t rev[WSP_SOCKS]);

/* The driver that polls the pipe hears of a backend socket before it is
 * closed (fn NULL: none). */
void wsp_pipe_set_driver(wsp_pipe_t *p,
                         void (*fn)(void *baton, apr_socket_t *sock),
                         void *baton);

/* The pipe's state, for its driver: WSP_ST_DONE and WSP_ST_FAILED end
 * it. */
wsp_state_e wsp_pipe_state(const wsp_pipe_t *p);

/* The first backend answered: the driver sends the client its 101. */
int wsp_pipe_upgrade_due(const wsp_pipe_t *p);

/* A run may write client messages to the backend even without news from
 * the client socket: input it left for later, or messages queued. */
int wsp_pipe_backend_bound(const wsp_pipe_t *p);

/* The client is upgraded and the session not over. */
int wsp_pipe_open(const wsp_pipe_t *p);

/* The session is not over: open, or detached (a server stopping closes
 * it). */
int wsp_pipe_session(const wsp_pipe_t *p);

/* Whether the pipe's backend is being drained and the pipe has not begun
 * to move (a driver wakes such pipes after an administrator's action). */
int wsp_pipe_should_move(const wsp_pipe_t *p);

/* The server stops: close both hops with 1001, as far as the sockets take
 * it without waiting. */
void wsp_pipe_going_away(wsp_pipe_t *p);

/* A registered pipe is over: its id is free, its driver forgotten, and
 * it is freed. */
void wsp_pipe_end(wsp_pipe_t *p);

/* Free the pipe (backend connection, buffers, pool). */
void wsp_pipe_destroy(wsp_pipe_t *p);

/* For log lines. */
const char *wsp_pipe_backend_url(const wsp_pipe_t *p);

/* Every line names the client id, its address and the backend, and goes
 * through the client's request while there is one, so that a LogLevel in
 * its <VirtualHost> or <Location> applies. */
#define WSP_LOG_FMT "ws_persist: client %s (%s) backend %s: "
#define WSP_LOG(p, level, rv, fmt, ...) do { \
    if ((p)->client && (p)->client->r) \
        ap_log_rerror(APLOG_MARK, level, rv, (p)->client->r, \
                      WSP_LOG_FMT fmt, (p)->id, (p)->client_ip, \
                      wsp_pipe_backend_url(p), ##__VA_ARGS__); \
    else \
        ap_log_error(APLOG_MARK, level, rv, (p)->s, WSP_LOG_FMT fmt, \
                     (p)->id, (p)->client_ip, wsp_pipe_backend_url(p), \
                     ##__VA_ARGS__); \
} while (0)

#endif /* WSP_PIPE_H */
