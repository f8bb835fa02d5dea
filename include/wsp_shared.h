/* The backend state every child shares: one anonymous shared memory
 * segment, kept across graceful restarts, under a global mutex that the
 * Mutex directive configures ("ws-persist-shm"). */
#ifndef WSP_SHARED_H
#define WSP_SHARED_H

#include "httpd.h"
#include "http_config.h"
#include "ap_mpm.h"

#include "wsp_pool.h"

#define WSP_SHARED_MUTEX "ws-persist-shm"

/* One backend as the manager and mod_status show it. */
typedef struct {
    const char *url;
    const char *state;          /* ok error removed draining drained
                                 * disabled */
    int weight;
    int pipes;                  /* live pipes, all children */
    int consecutive_errors;
    apr_uint64_t errors;
    apr_uint64_t served;
    apr_uint64_t failovers;
    apr_uint64_t bytes_in;      /* backend to clients */
    apr_uint64_t bytes_out;     /* clients to backend */
    int added;                  /* added at run time */
    int removing;               /* remove asked, draining first */
    const char *check;          /* last health check: pass, fail, or NULL
                                 * (none configured or not run yet) */
    const char *check_why;      /* why it failed, else "" */
    apr_time_t check_at;        /* when it ended */
} wsp_be_info_t;

typedef struct {
    const char *name;           /* location path ("#2".. if repeated) */
    int pipes;                  /* live pipes, all children */
    int free_slots;             /* room for backends added at run time */
    int detached;               /* sessions without a client now */
    apr_uint32_t resumed;       /* sessions resumed since start */
    apr_uint32_t expired;       /* detached sessions that ended unresumed */
    apr_array_header_t *backends;   /* of wsp_be_info_t, by value */
} wsp_pool_info_t;

/* b's last health check for people: "-" when none, else "pass" or
 * "fail: why", and when it ended (UTC). */
const char *wsp_shared_check_text(apr_pool_t *p, const wsp_be_info_t *b);

/* pre_config: register the mutex type. */
int wsp_shared_pre_config(apr_pool_t *pconf);

/* post_config (parent): make or reuse the segment, give every configured
 * backend its slot and the generation its nonce. It only tries the lock:
 * one that stays taken gets the new generation a lock and segment of its
 * own. */
int wsp_shared_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                           apr_pool_t *ptemp, server_rec *s);

/* child_init: attach the mutex, take this process's row of pipe counts. */
apr_status_t wsp_shared_child_init(apr_pool_t *pchild, server_rec *s);

/* Parent: a child exited; its row is marked, and the next process that
 * takes the lock counts its pipes out. The parent never takes the lock
 * here (the dead child may hold it). */
void wsp_shared_child_status(server_rec *s, pid_t pid, ap_generation_t gen,
                             int slot, mpm_child_status state);

/* Every pool with its backends, as all children see them now; NULL
 * when the segment is missing. Of wsp_pool_info_t, by value. */
apr_array_header_t *wsp_shared_snapshot(apr_pool_t *p);

/* A session of pool changed (DESIGN 7): counted per pool, in every
 * child's view. */
typedef enum {
    WSP_SESSION_DETACHED,       /* its client dropped */
    WSP_SESSION_ATTACHED,       /* ... and it has one again, or ended */
    WSP_SESSION_RESUMED,        /* a new connection took it up */
    WSP_SESSION_EXPIRED         /* it ended detached */
} wsp_session_ev_e;

void wsp_shared_session_event(const wsp_pool_t *pool, wsp_session_ev_e ev);

/* Pipes live in this process. */
int wsp_shared_process_pipes(void);

/* The manager's form nonce: random, new at every restart (graceful
 * too), and from then on the same in every child, old or new. */
const char *wsp_shared_nonce(void);

/* Apply an administrator action ("add", "drain", "remove", "enable",
 * "disable") to backend url of the named pool, in shared memory so in
 * every child at once. Returns an HTTP status: 200, 400 (unknown action,
 * pool or backend, bad URL) or 409 (add: already there or no free slot);
 * *msg says why. */
int wsp_shared_manage(apr_pool_t *p, const char *action, const char *pool,
                      const char *url, const char **msg);

/* Bumped by every administrator action: loops re-check their pipes'
 * backends when it moves. */
apr_uint32_t wsp_shared_admin_epoch(void);

/* The resolver found addrs (in p) for host, the name of backend lines
 * with resolve= or max=: each address, up to the line's max=, is made a
 * member of the line's pool, and members whose address left take no new
 * pipe, move their pipes and go (as remove does); in shared memory, so
 * every child agrees. Logs what changed, with no lock held. */
void wsp_shared_members(server_rec *s, const char *host,
                        apr_sockaddr_t *addrs, apr_pool_t *p);

#endif /* WSP_SHARED_H */
