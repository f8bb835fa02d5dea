/* Client id -> live pipe, for this process: an APR hash under a mutex
 * shared by the MPM's threads. */
#ifndef WSP_REGISTRY_H
#define WSP_REGISTRY_H

#include "wsp_pipe.h"

apr_status_t wsp_registry_child_init(apr_pool_t *p);

/* Register p under its id. When a live pipe holds the id: in reject mode
 * APR_EEXIST; in replace mode, for a resume, or when that pipe's session
 * is detached, ask its driver to let it go and wait up to wait for it:
 * APR_SUCCESS with *taken the old pipe, now the caller's (p is not
 * registered then), APR_EINVAL when p does not offer the old pipe's
 * subprotocol, or APR_TIMEUP (the request is withdrawn: the old driver
 * keeps its pipe). A resume finds no pipe: APR_NOTFOUND, p is not
 * registered. */
#define WSP_CLAIM_REPLACE 1       /* WSPersistDuplicateClient replace */
#define WSP_CLAIM_RESUME  2       /* the client says what it received */

apr_status_t wsp_registry_claim(wsp_pipe_t *p, int how,
                                apr_interval_time_t wait,
                                wsp_pipe_t **taken);

/* The pipe's session is detached (on) or not: a connection for its id
 * resumes it whatever WSPersistDuplicateClient says. */
void wsp_registry_detached(wsp_pipe_t *p, int on);

/* The pipe ended: its id is free at once. */
void wsp_registry_remove(wsp_pipe_t *p);

/* The driver of p saw a handover request (checked without the lock
 * first, cheaply): 1 when it is still asked for, and now under way; the
 * driver detaches the client, then calls wsp_registry_handed_over(). */
int wsp_registry_begin_handover(wsp_pipe_t *p);

/* The pipe's first backend settled its subprotocol (NULL: none). */
void wsp_registry_pin(wsp_pipe_t *p, const char *protocol);

/* The handover is done: the claimer takes the pipe. */
void wsp_registry_handed_over(wsp_pipe_t *p);

/* Install the wake-up of p's current driver; wakes it at once when a
 * handover was asked for meanwhile. fn NULL: the driver is leaving. */
void wsp_registry_set_wake(wsp_pipe_t *p, void (*fn)(void *), void *baton);

/* Live pipes of this process. */
int wsp_registry_count(void);

#endif /* WSP_REGISTRY_H */
