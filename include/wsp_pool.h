/* A location's pool of backends: selection (least pipes per weight),
 * errors, back-off and removal. APR only, so it is unit-tested alone.
 * State is per process for now; every call takes the pool lock. */
#ifndef WSP_POOL_H
#define WSP_POOL_H

#include <apr_pools.h>
#include <apr_tables.h>
#include <apr_network_io.h>
#include <apr_time.h>

typedef enum {
    WSP_BE_OK = 0,
    WSP_BE_ERROR,          /* backing off after failures */
    WSP_BE_REMOVED         /* max_errors reached: out until re-enabled */
} wsp_be_state_e;

typedef struct wsp_backend_t {
    const char *url;             /* as configured */
    int tls;                     /* wss:// */
    const char *host;
    apr_port_t port;
    const char *hostport;        /* Host header value */
    const char *path;            /* URL path, "/" at least */
    int weight;                  /* >= 1 */
    int max_errors;              /* 0: the pool's WSPersistMaxErrors */
    apr_sockaddr_t *addr;        /* resolved on first use */

    /* run-time state */
    wsp_be_state_e state;
    int consecutive_errors;
    apr_uint64_t errors;
    apr_time_t retry_at;         /* not tried before this */
    apr_interval_time_t retry_delay;
    int pipes;                   /* pipes using or connecting to it */
    apr_uint64_t served;         /* handshakes that succeeded */
} wsp_backend_t;

typedef struct {
    const char *name;            /* the location path */
    apr_array_header_t *backends; /* of wsp_backend_t * */
    unsigned int next;           /* rotates ties */
} wsp_pool_t;

typedef struct {
    apr_interval_time_t retry_min;
    apr_interval_time_t retry_max;
    int max_errors;
    int exclusive;
} wsp_pool_opts_t;

/* Parse "ws://host[:port][/path]" (or wss://) into be, with weight 1.
 * Returns NULL or an error text. */
const char *wsp_backend_parse(apr_pool_t *p, const char *url,
                              wsp_backend_t *be);

/* Create the lock that guards every pool of this process (child_init).
 * Without it (unit tests) nothing is locked. */
apr_status_t wsp_pool_child_init(apr_pool_t *p);

/* Pick a usable backend and count a pipe on it. Usable: not removed, not
 * backing off at now, and idle when exclusive. NULL when none; then
 * *next_try is the earliest time one may become usable by back-off, or 0
 * when only a released pipe (exclusive) or re-enabling can help. */
wsp_backend_t *wsp_pool_acquire(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                                apr_time_t now, apr_time_t *next_try);

/* The pipe stops using be. */
void wsp_pool_release(wsp_pool_t *pool, wsp_backend_t *be);

/* be failed (connect, handshake, interruption): count the error, back off
 * doubling from retry_min to retry_max, remove after max_errors in a row.
 * Failures reported while be is backing off are the same outage seen by
 * other pipes: they count in errors only. */
void wsp_pool_failed(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                     wsp_backend_t *be, apr_time_t now);

/* be completed a handshake: errors in a row reset, served counted. */
void wsp_pool_succeeded(wsp_pool_t *pool, wsp_backend_t *be);

/* Seconds until some backend may be tried again (for Retry-After), >= 1. */
int wsp_pool_retry_after(wsp_pool_t *pool, apr_time_t now);

#endif /* WSP_POOL_H */
