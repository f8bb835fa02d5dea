/* Active health checks: what WSPersistHealthCheck says, the parse of a
 * check's answer, and what a result does to a backend's shared state.
 * APR only, so it is unit-tested alone; the checker that runs the checks
 * is wsp_checker.c. */
#ifndef WSP_HCHECK_H
#define WSP_HCHECK_H

#include <apr_pools.h>
#include <apr_time.h>

#include "wsp_pool.h"
#include "wsp_handshake.h"

typedef enum {
    WSP_HC_TCP = 0,        /* the connect (and TLS for wss://) completes */
    WSP_HC_WS,             /* a WebSocket handshake to path gets its 101 */
    WSP_HC_GET             /* GET path is answered 2xx */
} wsp_hc_kind_e;

#define WSP_HC_DEFAULT_INTERVAL apr_time_from_sec(5)
#define WSP_HC_DEFAULT_TIMEOUT  apr_time_from_sec(2)
#define WSP_HC_MIN_INTERVAL     apr_time_from_msec(100)
#define WSP_HC_MAX_COUNT        100
/* The most of a GET check's answer looked at: the status line must be
 * within it. */
#define WSP_HC_HEAD_MAX         4096

struct wsp_hcheck_s {
    wsp_hc_kind_e kind;
    const char *path;              /* ws and get: "/..." */
    apr_interval_time_t interval;
    apr_interval_time_t timeout;   /* <= interval */
    int fails;                     /* failed checks in a row: down */
    int passes;                    /* passed checks in a row: up again */
    void *server;                  /* the server_rec of its section (whose
                                    * SSLProxy* settings a wss:// check
                                    * uses); NULL in the unit tests */
};

/* Parse the arguments of WSPersistHealthCheck: "tcp|ws:/path|get:/path
 * [interval=T] [timeout=T] [fails=N] [passes=N]". Returns NULL or an error
 * text naming the offending word. */
const char *wsp_hcheck_parse(apr_pool_t *p, const char *args,
                             wsp_hcheck_t *hc);

/* The name of a check kind: tcp, ws, get. */
const char *wsp_hcheck_kind_name(wsp_hc_kind_e kind);

/* The status of an HTTP answer's status line in buf (not NUL terminated):
 * WSP_HS_MORE (no complete line yet), WSP_HS_OK with *status set, or
 * WSP_HS_FAIL with *why (not HTTP, or no line within WSP_HC_HEAD_MAX). */
int wsp_hcheck_status(const char *buf, apr_size_t len, int *status,
                      const char **why);

/* What a result changed. */
#define WSP_HC_SAME  0
#define WSP_HC_DOWN  1     /* taken out: no new pipe gets it */
#define WSP_HC_UP    2     /* usable again, back-off cleared */

/* Record a check's result in st (the caller holds the pool lock). A
 * backend that fails hc->fails checks in a row is taken out (hc_down,
 * state error); one that passes hc->passes in a row after that, or
 * passes once while backing off after client failures, is ok at once.
 * What an administrator set (drain, disable) and removal by max_errors
 * stay: they are not the check's to undo. */
int wsp_hcheck_record(wsp_be_shared_t *st, const wsp_hcheck_t *hc, int pass,
                      const char *why, apr_time_t now);

#endif /* WSP_HCHECK_H */
