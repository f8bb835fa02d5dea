/* The worker-thread driver: a poll loop in the request's thread runs one
 * pipe. Works under every MPM. */
#ifndef WSP_LOOP_H
#define WSP_LOOP_H

#include "wsp_pipe.h"

typedef enum {
    WSP_LOOP_LIVE,          /* first backend ready: send the 101 */
    WSP_LOOP_FAILED,        /* no backend: answer 503 */
    WSP_LOOP_DONE,          /* the pipe ended */
    WSP_LOOP_HANDED_OVER    /* a newer connection owns the pipe now */
} wsp_loop_result_e;

/* Run p until its first backend is ready, it ends, or it is handed over.
 * Uses r's pool. */
wsp_loop_result_e wsp_loop_run(wsp_pipe_t *p, request_rec *r);

/* Whether the MPM's graceful stop has gone on long enough that live
 * pipes must close now (1001); *seen: when the stop was first seen. */
int wsp_stop_due(apr_time_t *seen, apr_time_t now);

/* The MPM is stopping this child (a stop, or a restart: new connections
 * go to other children). A detached session, which no resume can reach
 * here any more, ends at once. */
int wsp_mpm_stopping(void);

#endif /* WSP_LOOP_H */
