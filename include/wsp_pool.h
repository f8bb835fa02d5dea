/* A location's pool of backends: selection (least pipes per weight),
 * errors, back-off and removal. APR only, so it is unit-tested alone.
 * The state lives in shared memory (wsp_shared.c) so every child of the
 * server sees one; every call takes the pool lock. */
#ifndef WSP_POOL_H
#define WSP_POOL_H

#include <apr_pools.h>
#include <apr_tables.h>
#include <apr_network_io.h>
#include <apr_time.h>

/* Health, from handshakes and failures. */
typedef enum {
    WSP_BE_OK = 0,
    WSP_BE_ERROR,          /* backing off after failures */
    WSP_BE_REMOVED         /* max_errors reached: out until re-enabled */
} wsp_be_state_e;

/* What an administrator set (ws-persist-manager); it outranks health. */
typedef enum {
    WSP_ADM_NONE = 0,
    WSP_ADM_DRAINING,      /* no new pipes; its pipes move elsewhere */
    WSP_ADM_DRAINED,       /* draining, and no pipe left */
    WSP_ADM_DISABLED       /* no new pipes; its pipes stay */
} wsp_be_admin_e;

#define WSP_URL_MAX 512
#define WSP_HC_WHY_LEN 128

/* The last active health check (WSPersistHealthCheck) of a backend. */
typedef enum {
    WSP_HCR_NONE = 0,      /* not checked (yet) */
    WSP_HCR_PASS,
    WSP_HCR_FAIL
} wsp_hc_result_e;

typedef struct wsp_hcheck_s wsp_hcheck_t;

/* A backend's state as every child sees it: a slot in shared memory
 * (local memory in the unit tests). Changed under the pool lock, except
 * the byte counters, which are atomic. */
typedef struct {
    apr_uint32_t in_use;
    apr_uint32_t retired;        /* not in the running configuration */
    apr_uint32_t pool;           /* index of its pool in shared memory */
    apr_uint32_t added;          /* added at run time */
    apr_uint32_t removing;       /* drain, then free the slot */
    apr_uint32_t state;          /* wsp_be_state_e */
    apr_uint32_t admin;          /* wsp_be_admin_e */
    apr_int32_t weight;
    apr_int32_t max_errors;
    apr_int32_t consecutive_errors;
    apr_int32_t pipes;           /* pipes using or connecting to it */
    apr_uint32_t member;         /* an address of a name's backend line
                                  * (resolve=, max=): url is "URL (IP)" */
    apr_uint32_t dns_gone;       /* its address left the name's answer:
                                  * removing, back if it returns */
    apr_uint32_t pad;
    apr_uint64_t errors;
    apr_uint64_t served;         /* handshakes that succeeded */
    apr_uint64_t failovers;      /* pipes that lost it and moved on */
    volatile apr_uint64_t bytes_in;    /* backend to client */
    volatile apr_uint64_t bytes_out;   /* client to backend */
    apr_time_t retry_at;         /* not tried before this */
    apr_interval_time_t retry_delay;
    apr_uint32_t hc_down;        /* its health check failed: not handed
                                  * out until it passes again */
    apr_uint32_t hc_result;      /* wsp_hc_result_e of the last check */
    apr_int32_t hc_fails;        /* failed checks in a row */
    apr_int32_t hc_passes;       /* passed checks in a row */
    apr_time_t hc_at;            /* when the last check ended */
    char hc_why[WSP_HC_WHY_LEN]; /* why the last check failed */
    char url[WSP_URL_MAX];
} wsp_be_shared_t;

/* A process's view of one backend: the parsed URL and where its shared
 * state is. */
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
    const char *ip;              /* a member's address: connects go there,
                                  * Host and SNI stay host; NULL: host's
                                  * addresses */
    apr_interval_time_t resolve; /* a name line's resolve=, 0: the
                                  * server's WSPersistResolveInterval */
    int max_members;             /* a name line's max= */
    int capped;                  /* its answer passed max= (logged once) */

    wsp_be_shared_t *st;         /* shared state */
    apr_uint32_t *mine;          /* this process's pipes on it, or NULL */
    int slot;                    /* index in shared memory, -1: none */
} wsp_backend_t;

typedef struct wsp_pool_t wsp_pool_t;

struct wsp_pool_t {
    const char *name;            /* the location path */
    apr_array_header_t *backends; /* of wsp_backend_t *: the usable ones */
    unsigned int next;           /* rotates ties */
    int spare;                   /* WSPersistBackendSlots */
    int index;                   /* in shared memory, -1: none */
    apr_uint32_t epoch;          /* of the shared slots backends mirrors */
    const wsp_hcheck_t *hcheck;  /* WSPersistHealthCheck, NULL: none */
    apr_array_header_t *synced[2]; /* the views backends alternates
                                  * between once synced (wsp_shared.c) */
    apr_array_header_t *names;   /* of wsp_backend_t *: lines with
                                  * resolve= or max=, whose members (one
                                  * per address) are made in backends by
                                  * the resolver; NULL: none */
};

#define WSP_MEMBERS_DEFAULT 8
#define WSP_MEMBERS_MAX     256
/* what a member's name adds to its line's URL: " (" address ")" */
#define WSP_MEMBER_SUFFIX_MAX 64

/* Shared memory hooks, none in the unit tests: the pool lock (global
 * across children) and a re-read of a pool's backends when slots were
 * taken or freed since the view was made (called under the lock). */
typedef struct {
    void (*lock)(void);
    void (*unlock)(void);
    void (*sync)(wsp_pool_t *pool);
    void (*free_slot)(wsp_backend_t *be);
} wsp_pool_hooks_t;

void wsp_pool_set_hooks(const wsp_pool_hooks_t *hooks);

/* Whether this process can try be now; NULL (the unit tests): always.
 * The resolver's says no while be's host has its first lookup under way,
 * so that a name not yet looked up in one child is not counted as the
 * backend's failure in all of them. */
void wsp_pool_set_ready(int (*ready)(const wsp_backend_t *be));

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

/* The name of a member of a name line: "URL (IP)". */
const char *wsp_member_name(apr_pool_t *p, const char *url, const char *ip);

/* Parse a slot's name, a URL or a member's "URL (IP)", into be. */
const char *wsp_backend_parse_slot(apr_pool_t *p, const char *name,
                                   wsp_backend_t *be);

/* Give be local shared state (unit tests, config time before the shared
 * memory exists). */
void wsp_backend_local_state(apr_pool_t *p, wsp_backend_t *be);

/* The name shown for be's state: ok, error, removed, draining, drained,
 * disabled. */
const char *wsp_backend_state_name(const wsp_be_shared_t *st);

/* Pick a usable backend and count a pipe on it. Usable: not removed, not
 * backing off at now, not drained or disabled, not down by its health
 * check, not `avoid`, idle when exclusive, and ready
 * (wsp_pool_set_ready). NULL when none; then
 * *next_try is the earliest time one may become usable by back-off, or 0
 * when only a released pipe (exclusive), re-enabling or a lookup under
 * way can help. */
wsp_backend_t *wsp_pool_acquire(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                                apr_time_t now, const wsp_backend_t *avoid,
                                apr_time_t *next_try);

/* The pipe stops using be. A draining backend left with no pipe becomes
 * drained, or its slot is freed when it was being removed. */
void wsp_pool_release(wsp_pool_t *pool, wsp_backend_t *be);

/* A pipe lost be and looks for another: counted for the status page. */
void wsp_pool_failover(wsp_backend_t *be);

/* Whether pipes on be should move to another backend (drain, remove). */
int wsp_pool_leaving(const wsp_backend_t *be);

/* Administrator actions on a backend's shared state (under the lock). */
void wsp_pool_drain(wsp_be_shared_t *st, int remove);
void wsp_pool_disable(wsp_be_shared_t *st);
void wsp_pool_enable(wsp_be_shared_t *st);

/* be failed (connect, handshake, interruption): count the error, back off
 * doubling from retry_min to retry_max, remove after max_errors in a row.
 * Failures reported while be is backing off are the same outage seen by
 * other pipes: they count in errors only. */
void wsp_pool_failed(wsp_pool_t *pool, const wsp_pool_opts_t *o,
                     wsp_backend_t *be, apr_time_t now);

/* be completed a handshake: errors in a row reset, served counted. */
void wsp_pool_succeeded(wsp_pool_t *pool, wsp_backend_t *be);

/* How many backends pool has as every child sees them now. */
int wsp_pool_size(wsp_pool_t *pool);

/* The backends of pool as every child sees them now, a copy in p (the
 * health checker's round over them). */
apr_array_header_t *wsp_pool_backends(wsp_pool_t *pool, apr_pool_t *p);

/* Record a health check's result for be under the pool lock, if be's
 * slot still holds it (a backend removed meanwhile is left alone).
 * Returns WSP_HC_SAME, WSP_HC_DOWN or WSP_HC_UP (wsp_hcheck.h). */
int wsp_pool_checked(wsp_pool_t *pool, wsp_backend_t *be, int pass,
                     const char *why, apr_time_t now);

/* Seconds until some backend may be tried again (for Retry-After), >= 1. */
int wsp_pool_retry_after(wsp_pool_t *pool, apr_time_t now);

#endif /* WSP_POOL_H */
