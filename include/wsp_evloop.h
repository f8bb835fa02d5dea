/* The event-MPM driver: after the 101 the handler returns SUSPENDED, the
 * MPM lets go of the connection, and one loop thread per child runs every
 * such pipe from an apr_pollset. No worker thread is held while a pipe is
 * idle. */
#ifndef WSP_EVLOOP_H
#define WSP_EVLOOP_H

#include "httpd.h"

#include "wsp_pipe.h"

/* WSPersistEventLoop (On by default) and WSPersistEventLoopThreads (0:
 * one per CPU): set at configuration time. */
extern int wsp_evloop_wanted;
extern int wsp_evloop_threads;

/* Start this child's loop when the MPM is event and the loop is wanted. */
void wsp_evloop_child_init(apr_pool_t *pchild, server_rec *s);

/* Whether the handler may hand pipes over (and return SUSPENDED). */
int wsp_evloop_available(void);

/* The handler is about to return SUSPENDED for p on r's connection. */
void wsp_evloop_mark(request_rec *r, wsp_pipe_t *p);

/* suspend_connection hook: the MPM is done with c; adopt its pipe. */
void wsp_evloop_suspended(conn_rec *c, request_rec *r);

/* Pipes this child's loop runs now. */
int wsp_evloop_count(void);

#endif /* WSP_EVLOOP_H */
