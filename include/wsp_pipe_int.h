/* What the files of the pipe share among themselves: its constants and
 * the functions each concern offers the others. Drivers and the rest of
 * the module use wsp_pipe.h only. */
#ifndef WSP_PIPE_INT_H
#define WSP_PIPE_INT_H

#include "wsp_pipe.h"

#define WSP_READ_CHUNK   (64 * 1024)
#define WSP_READ_BUDGET  (512 * 1024)    /* per hop per run, for fairness */
#define WSP_PASS_CHUNK   (32 * 1024)     /* below the core's flush limit */
#define WSP_OUT_HIGH     (256 * 1024)    /* stop reading the backend */
#define WSP_CTRL_ALLOWANCE 2048          /* control bytes toward a client
                                          * between two empty outputs */
#define WSP_CLOSE_WAIT   apr_time_from_sec(5)
#define WSP_BUSY_WAIT    apr_time_from_msec(50)
#define WSP_IOV          64
#define WSP_MOVE_RETRY   apr_time_from_sec(1)
/* A backend may answer a close before the replies to the messages that
 * came just before it (python's websockets does): the retiring backend
 * gets its 1001 once it has been quiet this long, or after the cap. */
#define WSP_RETIRE_QUIET apr_time_from_msec(250)
#define WSP_RETIRE_CAP   apr_time_from_sec(2)
/* WSPersistAck: a move waits this long at most for the draining
 * backend to acknowledge what it was written */
#define WSP_ACK_WAIT     apr_time_from_sec(2)

/* wsp_pipe.c: the state */
void wsp_transit(wsp_pipe_t *p, wsp_state_e to, const char *why);
int wsp_closing(const wsp_pipe_t *p);
int wsp_connecting(const wsp_pipe_t *p);
void wsp_settle(wsp_pipe_t *p, const char *why);
int wsp_backpressure(const wsp_pipe_t *p);
/* The pipe holds a hop unread by its own choice: the client while a slow
 * backend keeps the buffer full, every backend while the client's output
 * is full. */
int wsp_client_held(const wsp_pipe_t *p);
int wsp_client_output_full(const wsp_pipe_t *p);

/* wsp_relay.c: hop I/O */
int wsp_client_stalled(const wsp_hop_t *cl);
void wsp_backend_ctrl(wsp_pipe_t *p, int opcode,
                      const unsigned char *payload, apr_size_t len);
void wsp_client_ctrl(wsp_pipe_t *p, int opcode,
                     const unsigned char *payload, apr_size_t len);
int wsp_client_flush(wsp_pipe_t *p, apr_time_t now);
int wsp_backend_flush(wsp_pipe_t *p, apr_time_t now);
int wsp_client_read(wsp_pipe_t *p, apr_time_t now, int ready);
void wsp_backend_data(wsp_pipe_t *p, wsp_hop_in_t *in, int ev);
void wsp_client_give(wsp_pipe_t *p, wsp_rmsg_t *m);
void wsp_backend_acked(wsp_pipe_t *p, const wsp_hop_in_t *in);
int wsp_backend_hold(wsp_pipe_t *p, apr_time_t now, int ready);
int wsp_backend_read(wsp_pipe_t *p, apr_time_t now, int ready);

/* wsp_failover.c: connecting, failing over */

/* How a backend ended, for the one function that decides what it means:
 * an interruption (fail over), the end of the session, or, while the
 * session closes, the end of its closing handshake. */
typedef enum {
    WSP_END_IO,                /* its connection closed or failed */
    WSP_END_NO_PONG,           /* no answer to a ping in time */
    WSP_END_CLOSE,             /* a close frame: code, reason */
    WSP_END_PROTOCOL,          /* it broke the protocol: code 1002, 1007 */
    WSP_END_TOO_BIG            /* a message over the cap */
} wsp_end_e;

void wsp_backend_ended(wsp_pipe_t *p, apr_time_t now, wsp_end_e how,
                       int code, const char *reason, apr_size_t rlen,
                       const char *why);
void wsp_bhop_end(wsp_pipe_t *p, wsp_hop_t *h);
int wsp_bhop_handshake(wsp_hop_t *h, apr_time_t now, const char **why);
void wsp_backend_drop(wsp_pipe_t *p);
const char *wsp_backend_request(void *baton, apr_pool_t *tp,
                                const char *key);
apr_interval_time_t wsp_attempt_time(const wsp_pipe_t *p);
void wsp_connected(wsp_pipe_t *p, apr_time_t now);
const char *wsp_received_check(wsp_pipe_t *p, wsp_bconn_t *bc);
int wsp_resume_at(wsp_pipe_t *p, apr_time_t now);
int wsp_connect_step(wsp_pipe_t *p, apr_time_t now);
void wsp_connect_timeout(wsp_pipe_t *p, apr_time_t now);

/* wsp_move.c: moving off a draining backend */
int wsp_retiring(const wsp_pipe_t *p);
int wsp_pipe_should_move(const wsp_pipe_t *p);
int wsp_move_due(const wsp_pipe_t *p, apr_time_t now);
int wsp_quiescing(const wsp_pipe_t *p);
void wsp_aux_end(wsp_pipe_t *p);
void wsp_move_start(wsp_pipe_t *p, apr_time_t now);
int wsp_move_switch(wsp_pipe_t *p, apr_time_t now);
int wsp_aux_step(wsp_pipe_t *p, apr_time_t now, int ready);

/* wsp_closing.c: the end of a session */
void wsp_client_gone(wsp_pipe_t *p, apr_time_t now, const char *why,
                     apr_status_t rv);
void wsp_begin_ending(wsp_pipe_t *p, apr_time_t now, const char *why);
void wsp_client_close(wsp_pipe_t *p, apr_time_t now, int code,
                      const char *reason, apr_size_t rlen);
void wsp_client_violation(wsp_pipe_t *p, apr_time_t now, int code);
void wsp_backend_going_away(wsp_pipe_t *p, const char *reason);
void wsp_check_done(wsp_pipe_t *p, apr_time_t now);

/* wsp_resume.c: sessions that outlive a client connection */
void wsp_detach(wsp_pipe_t *p, apr_time_t now, const char *why,
                apr_status_t rv);
void wsp_detached_end(wsp_pipe_t *p, apr_time_t now, const char *why);
void wsp_detached_step(wsp_pipe_t *p, apr_time_t now);
void wsp_session_undetach(wsp_pipe_t *p, int resumed);
void wsp_backend_kept(wsp_pipe_t *p, wsp_hop_in_t *in, int ev);

#endif /* WSP_PIPE_INT_H */
