/* Backend state shared by every child: one anonymous shared memory
 * segment made by the parent and inherited by fork, and a global mutex.
 *
 * The segment lives in the process pool, so a graceful restart keeps it:
 * a backend that stays in the configuration keeps its slot (errors,
 * back-off, counters, and the pipes old children still hold), one that
 * leaves it is retired for new children while old ones may still use it.
 * Each process counts its pipes per slot in a row of its own, so the
 * pipes of a child that dies without releasing them are counted out.
 *
 * The parent never waits for the lock: a child may have died holding it.
 * It marks a dead child's row with an atomic store, for the next holder
 * to reclaim, and at a restart it only tries the lock. */
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include "apr_atomic.h"
#include "apr_global_mutex.h"
#include "apr_shm.h"
#include "apr_strings.h"
#include "apr_lib.h"
#include "http_core.h"
#include "http_log.h"
#include "util_mutex.h"

#include "mod_ws_persist.h"
#include "wsp_config.h"
#include "wsp_shared.h"

/* bumped when the layout changes: a graceful restart into a new build
 * does not read an old segment with the new layout */
#define WSP_SHM_MAGIC 0x77737035u
#define WSP_POOL_NAME_MAX 256
#define WSP_NONCE_LEN 32

typedef struct {
    char name[WSP_POOL_NAME_MAX];
    apr_uint32_t in_use;
    apr_uint32_t retired_gen;    /* 0: in the running configuration */
    apr_uint32_t spare;          /* WSPersistBackendSlots */
    apr_uint32_t detached;       /* sessions detached now (atomic) */
    apr_uint32_t resumed;        /* sessions resumed, ever */
    apr_uint32_t expired;        /* detached sessions that ended */
} wsp_pool_shared_t;

typedef struct {
    apr_uint32_t magic;
    apr_uint32_t npools;
    apr_uint32_t nslots;
    apr_uint32_t nrows;
    apr_uint32_t epoch;          /* slots taken, freed or retired */
    apr_uint32_t admin_epoch;    /* administrator actions */
    apr_uint32_t deaths;         /* rows the parent marked dead */
    apr_uint32_t deaths_seen;    /* ... up to which they were reclaimed */
    apr_uint32_t nonce_at;       /* which of nonces is the current one */
    apr_uint32_t gen;            /* of the configuration last bound */
    char nonces[2][WSP_NONCE_LEN + 1];
} wsp_shm_head_t;

/* A process's pipes per slot; pid 0: free. */
typedef struct {
    pid_t pid;
    apr_uint32_t dead;           /* pid the parent saw exit, else 0 */
    apr_uint32_t counts[1];      /* nslots of them */
} wsp_row_t;

/* What survives a restart in the parent. */
typedef struct {
    apr_shm_t *shm;
    apr_global_mutex_t *mutex;
    const char *mutex_file;
} wsp_retained_t;

/* Inherited by the children of this generation. */
static wsp_shm_head_t *wsp_head;
static apr_global_mutex_t *wsp_mutex;
static const char *wsp_mutex_file;
static apr_uint32_t wsp_gen;
static wsp_row_t *wsp_row;
static wsp_backend_t **wsp_views;   /* by slot: this process's parse */
static apr_pool_t *wsp_vpool;       /* views of backends added later */

/* ---- layout ------------------------------------------------------------ */

#define WSP_ALIGN(n) (((n) + 15) & ~(apr_size_t)15)

static apr_size_t wsp_row_size(apr_uint32_t nslots)
{
    return WSP_ALIGN(APR_OFFSETOF(wsp_row_t, counts)
                     + nslots * sizeof(apr_uint32_t));
}

static apr_size_t wsp_shm_size(apr_uint32_t npools, apr_uint32_t nslots,
                               apr_uint32_t nrows)
{
    return WSP_ALIGN(sizeof(wsp_shm_head_t))
           + WSP_ALIGN(npools * sizeof(wsp_pool_shared_t))
           + WSP_ALIGN(nslots * sizeof(wsp_be_shared_t))
           + nrows * wsp_row_size(nslots);
}

static wsp_pool_shared_t *wsp_pools_of(wsp_shm_head_t *h)
{
    return (wsp_pool_shared_t *)((char *)h
                                 + WSP_ALIGN(sizeof(wsp_shm_head_t)));
}

static wsp_be_shared_t *wsp_slots_of(wsp_shm_head_t *h)
{
    return (wsp_be_shared_t *)((char *)wsp_pools_of(h)
                               + WSP_ALIGN(h->npools
                                           * sizeof(wsp_pool_shared_t)));
}

static wsp_row_t *wsp_row_of(wsp_shm_head_t *h, apr_uint32_t i)
{
    return (wsp_row_t *)((char *)wsp_slots_of(h)
                         + WSP_ALIGN(h->nslots * sizeof(wsp_be_shared_t))
                         + i * wsp_row_size(h->nslots));
}

/* ---- lock -------------------------------------------------------------- */

static void wsp_reap(wsp_shm_head_t *h);

/* Whoever takes the lock first counts out the children the parent saw
 * die, before anyone reads a pipe count. */
static void wsp_shared_lock(void)
{
    if (wsp_mutex) {
        apr_global_mutex_lock(wsp_mutex);
        if (wsp_head) {
            wsp_reap(wsp_head);
        }
    }
}

static void wsp_shared_unlock(void)
{
    if (wsp_mutex) {
        apr_global_mutex_unlock(wsp_mutex);
    }
}

/* ---- slots ------------------------------------------------------------- */

/* Whether a child of this generation uses the slot: old children keep
 * using what a newer configuration retired. */
static int wsp_slot_visible(const wsp_be_shared_t *st, apr_uint32_t gen)
{
    return st->in_use && (!st->retired || st->retired > gen);
}

static void wsp_slot_free(wsp_shm_head_t *h, wsp_be_shared_t *st)
{
    memset(st, 0, sizeof(*st));
    h->epoch++;
}

static void wsp_slot_hc_clear(wsp_be_shared_t *st)
{
    if (st->hc_down && st->state == WSP_BE_ERROR) {
        st->state = WSP_BE_OK;
    }
    st->hc_down = 0;
    st->hc_result = WSP_HCR_NONE;
    st->hc_fails = st->hc_passes = 0;
    st->hc_at = 0;
    st->hc_why[0] = '\0';
}

/* A slot for a new backend: never used, else retired and idle. */
static int wsp_slot_take(wsp_shm_head_t *h, const unsigned char *claimed)
{
    wsp_be_shared_t *slots = wsp_slots_of(h);
    apr_uint32_t i;

    for (i = 0; i < h->nslots; ++i) {
        if (!slots[i].in_use && !(claimed && claimed[i])) {
            return (int)i;
        }
    }
    for (i = 0; i < h->nslots; ++i) {
        if (slots[i].retired && slots[i].pipes <= 0
            && !(claimed && claimed[i])) {
            return (int)i;
        }
    }
    return -1;
}

static void wsp_slot_init(wsp_shm_head_t *h, int i, apr_uint32_t pool,
                          const char *url, int weight, int max_errors)
{
    wsp_be_shared_t *st = &wsp_slots_of(h)[i];

    memset(st, 0, sizeof(*st));
    st->in_use = 1;
    st->pool = pool;
    st->weight = weight;
    st->max_errors = max_errors;
    apr_cpystrn(st->url, url, WSP_URL_MAX);
    h->epoch++;
}

/* Count the pipes of a process that is gone out of the slots. */
static void wsp_row_reclaim(wsp_shm_head_t *h, wsp_row_t *row)
{
    wsp_be_shared_t *slots = wsp_slots_of(h);
    apr_uint32_t i;

    for (i = 0; i < h->nslots; ++i) {
        if (row->counts[i]) {
            slots[i].pipes -= (apr_int32_t)row->counts[i];
            if (slots[i].pipes < 0) {
                slots[i].pipes = 0;
            }
            if (slots[i].pipes == 0 && slots[i].admin == WSP_ADM_DRAINING) {
                slots[i].admin = WSP_ADM_DRAINED;
            }
            if (slots[i].pipes == 0 && slots[i].removing) {
                wsp_slot_free(h, &slots[i]);
            }
            row->counts[i] = 0;
        }
    }
    row->pid = 0;
    apr_atomic_set32(&row->dead, 0);
}

/* Under the lock: reclaim the rows the parent marked. A mark that no
 * longer matches its row's pid came after the row changed hands (a new
 * child found the pid gone and reclaimed the row first): dropped. */
static void wsp_reap(wsp_shm_head_t *h)
{
    apr_uint32_t deaths = apr_atomic_read32(&h->deaths), k;

    if (deaths == h->deaths_seen) {
        return;
    }
    for (k = 0; k < h->nrows; ++k) {
        wsp_row_t *row = wsp_row_of(h, k);
        apr_uint32_t dead = apr_atomic_read32(&row->dead);

        if (dead && dead == (apr_uint32_t)row->pid) {
            wsp_row_reclaim(h, row);
        }
        else if (dead) {
            apr_atomic_cas32(&row->dead, 0, dead);
        }
    }
    h->deaths_seen = deaths;
}

static int wsp_pool_find_index(wsp_shm_head_t *h, const char *name)
{
    wsp_pool_shared_t *pools = wsp_pools_of(h);
    apr_uint32_t i;

    for (i = 0; i < h->npools; ++i) {
        if (pools[i].in_use && !pools[i].retired_gen
            && !strcmp(pools[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

/* ---- the configuration's backends onto the slots ------------------------ */

/* Whether st is a member of name line url in pool idx, retired or not. */
static int wsp_member_of_line(const wsp_be_shared_t *st, apr_uint32_t idx,
                              const char *url)
{
    apr_size_t len = strlen(url);

    return st->in_use && st->member && st->pool == idx
           && !strncmp(st->url, url, len) && st->url[len] == ' ';
}

/* The members of a name line that stays keep their slots, health and
 * pipes across a restart, up to its max= (which may have shrunk); the
 * resolver adds and removes from there. */
static void wsp_bind_members(wsp_shm_head_t *h, wsp_pool_t *pool,
                             apr_uint32_t idx, unsigned char *claimed)
{
    wsp_be_shared_t *slots = wsp_slots_of(h);
    apr_uint32_t k;
    int j;

    for (j = 0; pool->names && j < pool->names->nelts; ++j) {
        wsp_backend_t *line = APR_ARRAY_IDX(pool->names, j, wsp_backend_t *);
        int kept = 0;

        for (k = 0; k < h->nslots && kept < line->max_members; ++k) {
            wsp_be_shared_t *st = &slots[k];

            if (claimed[k] || !wsp_member_of_line(st, idx, line->url)
                || st->dns_gone) {
                continue;
            }
            claimed[k] = 1;
            kept++;
            st->retired = 0;
            st->weight = line->weight;
            st->max_errors = line->max_errors;
            if (!pool->hcheck) {
                wsp_slot_hc_clear(st);
            }
        }
    }
}

static void wsp_bind(wsp_shm_head_t *h, apr_array_header_t *cpools,
                     apr_uint32_t gen, apr_pool_t *ptemp)
{
    wsp_pool_shared_t *pools = wsp_pools_of(h);
    wsp_be_shared_t *slots = wsp_slots_of(h);
    unsigned char *claimed = apr_pcalloc(ptemp, h->nslots);
    int i, j;
    apr_uint32_t k;

    for (i = 0; cpools && i < cpools->nelts; ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(cpools, i, wsp_pool_t *);
        int idx = -1;

        for (k = 0; k < h->npools; ++k) {
            if (pools[k].in_use && !strcmp(pools[k].name, pool->name)) {
                idx = (int)k;
                break;
            }
        }
        for (k = 0; idx < 0 && k < h->npools; ++k) {
            if (!pools[k].in_use) {
                idx = (int)k;
                memset(&pools[k], 0, sizeof(pools[k]));
                apr_cpystrn(pools[k].name, pool->name, WSP_POOL_NAME_MAX);
                pools[k].in_use = 1;
            }
        }
        if (idx < 0) {
            continue;               /* cannot happen: sized with headroom;
                                     * its backends keep local state */
        }
        pools[idx].retired_gen = 0;
        pools[idx].spare = (apr_uint32_t)pool->spare;
        pool->index = idx;

        for (j = 0; j < pool->backends->nelts; ++j) {
            wsp_backend_t *be = APR_ARRAY_IDX(pool->backends, j,
                                              wsp_backend_t *);
            int s = -1;

            for (k = 0; k < h->nslots; ++k) {
                if (slots[k].in_use && slots[k].pool == (apr_uint32_t)idx
                    && !claimed[k] && !strcmp(slots[k].url, be->url)) {
                    s = (int)k;
                    break;
                }
            }
            if (s >= 0) {
                /* the same backend: its health and counters carry over,
                 * what an administrator changed does not */
                wsp_be_shared_t *st = &slots[s];

                st->retired = 0;
                st->added = 0;
                st->removing = 0;
                st->admin = WSP_ADM_NONE;
                st->weight = be->weight;
                st->max_errors = be->max_errors;
                if (!pool->hcheck) {
                    /* no check any more: none of its verdict stays */
                    wsp_slot_hc_clear(st);
                }
            }
            else if ((s = wsp_slot_take(h, claimed)) >= 0) {
                wsp_slot_init(h, s, (apr_uint32_t)idx, be->url, be->weight,
                              be->max_errors);
            }
            else {
                continue;           /* cannot happen: sized with headroom;
                                     * the backend keeps local state */
            }
            claimed[s] = 1;
            be->slot = s;
            be->st = &slots[s];
        }
        wsp_bind_members(h, pool, (apr_uint32_t)idx, claimed);
        pool->epoch = h->epoch;
    }
    /* what the configuration no longer names: retired for new children */
    for (k = 0; k < h->nslots; ++k) {
        if (slots[k].in_use && !claimed[k]) {
            if (slots[k].pipes > 0) {
                if (!slots[k].retired) {
                    slots[k].retired = gen;
                }
            }
            else {
                memset(&slots[k], 0, sizeof(slots[k]));
            }
        }
    }
    for (k = 0; k < h->npools; ++k) {
        int named = 0;

        for (i = 0; cpools && i < cpools->nelts; ++i) {
            named |= APR_ARRAY_IDX(cpools, i, wsp_pool_t *)->index
                     == (int)k;
        }
        if (pools[k].in_use && !named && !pools[k].retired_gen) {
            pools[k].retired_gen = gen;
        }
    }
    /* a retired pool whose backends are all gone frees its entry */
    for (k = 0; k < h->npools; ++k) {
        apr_uint32_t n;
        int used = 0;

        for (n = 0; n < h->nslots && !used; ++n) {
            used = slots[n].in_use && slots[n].pool == k;
        }
        if (pools[k].in_use && pools[k].retired_gen && !used) {
            memset(&pools[k], 0, sizeof(pools[k]));
        }
    }
    h->epoch++;
    h->gen = gen;
    for (i = 0; cpools && i < cpools->nelts; ++i) {
        APR_ARRAY_IDX(cpools, i, wsp_pool_t *)->epoch = h->epoch;
    }
}

/* Copy the state of backends that stay from an old segment into a new
 * one that was just bound (the old one was too small). */
static void wsp_carry_over(wsp_shm_head_t *to, wsp_shm_head_t *from)
{
    wsp_pool_shared_t *tp = wsp_pools_of(to), *fp = wsp_pools_of(from);
    wsp_be_shared_t *ts = wsp_slots_of(to), *fs = wsp_slots_of(from);
    apr_uint32_t i, k;

    for (i = 0; i < to->nslots; ++i) {
        if (!ts[i].in_use) {
            continue;
        }
        for (k = 0; k < from->nslots; ++k) {
            if (fs[k].in_use && !strcmp(fs[k].url, ts[i].url)
                && !strcmp(fp[fs[k].pool].name, tp[ts[i].pool].name)) {
                ts[i].state = fs[k].state;
                ts[i].consecutive_errors = fs[k].consecutive_errors;
                ts[i].errors = fs[k].errors;
                ts[i].served = fs[k].served;
                ts[i].failovers = fs[k].failovers;
                ts[i].bytes_in = fs[k].bytes_in;
                ts[i].bytes_out = fs[k].bytes_out;
                ts[i].retry_at = fs[k].retry_at;
                ts[i].retry_delay = fs[k].retry_delay;
                break;
            }
        }
    }
}

/* ---- hooks ------------------------------------------------------------- */

int wsp_shared_pre_config(apr_pool_t *pconf)
{
    wsp_conf_reset();
    return ap_mutex_register(pconf, WSP_SHARED_MUTEX, NULL, APR_LOCK_DEFAULT,
                             0) == APR_SUCCESS ? OK : !OK;
}

static apr_status_t wsp_shared_make(wsp_retained_t *rt, server_rec *s,
                                    apr_uint32_t npools, apr_uint32_t nslots,
                                    apr_uint32_t nrows)
{
    apr_size_t size = wsp_shm_size(npools, nslots, nrows);
    apr_shm_t *shm;
    wsp_shm_head_t *h;
    apr_status_t rv;

    rv = apr_shm_create(&shm, size, NULL, s->process->pool);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ws_persist: cannot "
                     "create %" APR_SIZE_T_FMT " bytes of shared memory",
                     size);
        return rv;
    }
    h = apr_shm_baseaddr_get(shm);
    memset(h, 0, size);
    h->magic = WSP_SHM_MAGIC;
    h->npools = npools;
    h->nslots = nslots;
    h->nrows = nrows;
    rt->shm = shm;
    return APR_SUCCESS;
}

static apr_status_t wsp_nonce_make(char *out)
{
    unsigned char rnd[WSP_NONCE_LEN / 2];
    apr_status_t rv = apr_generate_random_bytes(rnd, sizeof(rnd));
    int i;

    for (i = 0; rv == APR_SUCCESS && i < (int)sizeof(rnd); ++i) {
        apr_snprintf(out + 2 * i, 3, "%02x", rnd[i]);
    }
    return rv;
}

/* Each generation's nonce goes to the buffer readers are not using; then
 * they are pointed at it, so that none reads half of each. */
static void wsp_nonce_publish(wsp_shm_head_t *h, const char *nonce)
{
    apr_uint32_t next = (apr_atomic_read32(&h->nonce_at) + 1) & 1;

    apr_cpystrn(h->nonces[next], nonce, sizeof(h->nonces[next]));
    apr_atomic_set32(&h->nonce_at, next);
}

/* Children hold the lock for moments and never across I/O; one that
 * stays taken this long belongs to a child that died or stopped in it
 * (posixsem never gives back the lock of a process that died). */
#define WSP_PARENT_LOCK_TRIES 500
#define WSP_PARENT_LOCK_PAUSE apr_time_from_msec(10)

/* The parent must not hang on a lock a child may hold: it only tries. */
static apr_status_t wsp_parent_trylock(void)
{
    apr_status_t rv = APR_EBUSY;
    int i;

    for (i = 0; i < WSP_PARENT_LOCK_TRIES && APR_STATUS_IS_EBUSY(rv); ++i) {
        if (i) {
            apr_sleep(WSP_PARENT_LOCK_PAUSE);
        }
        rv = apr_global_mutex_trylock(wsp_mutex);
    }
    return rv;
}

static apr_status_t wsp_mutex_make(wsp_retained_t *rt, server_rec *s,
                                   const char *instance)
{
    apr_status_t rv;

    rv = ap_global_mutex_create(&rt->mutex, &rt->mutex_file,
                                WSP_SHARED_MUTEX, instance, s,
                                s->process->pool, 0);
    wsp_mutex = rt->mutex;
    wsp_mutex_file = rt->mutex_file;
    return rv;
}

int wsp_shared_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                           apr_pool_t *ptemp, server_rec *s)
{
    static const char *key = "ws_persist_shared";
    apr_array_header_t *cpools = wsp_conf_pools();
    wsp_retained_t *rt = NULL;
    apr_uint32_t npools = 0, nslots = 0, nrows;
    char nonce[WSP_NONCE_LEN + 1];
    int daemons = 0, i, j;
    apr_status_t rv;

    (void)pconf;
    (void)plog;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) {
        return OK;                  /* the first, trial read of the config */
    }
    wsp_gen = (apr_uint32_t)ap_state_query(AP_SQ_CONFIG_GEN) + 1;
    /* the manager's forms are good for one generation */
    if ((rv = wsp_nonce_make(nonce)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ws_persist: no random "
                     "bytes for the manager's nonce");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    apr_pool_userdata_get((void **)&rt, key, s->process->pool);
    if (!rt) {
        rt = apr_pcalloc(s->process->pool, sizeof(*rt));
        apr_pool_userdata_set(rt, key, apr_pool_cleanup_null,
                              s->process->pool);
    }
    /* one mutex for the life of the server: old and new children of a
     * graceful restart change the same slots */
    if (!rt->mutex && wsp_mutex_make(rt, s, NULL) != APR_SUCCESS) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    wsp_mutex = rt->mutex;
    wsp_mutex_file = rt->mutex_file;

    for (i = 0; cpools && i < cpools->nelts; ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(cpools, i, wsp_pool_t *);

        npools++;
        nslots += (apr_uint32_t)(pool->backends->nelts + pool->spare);
        for (j = 0; pool->names && j < pool->names->nelts; ++j) {
            nslots += (apr_uint32_t)APR_ARRAY_IDX(pool->names, j,
                                                  wsp_backend_t *)
                      ->max_members;
        }
    }
    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &daemons);
    /* rows for this generation's children and those still finishing */
    nrows = (apr_uint32_t)(daemons > 0 ? daemons : 16) * 2 + 16;

    if (rt->shm) {
        wsp_shm_head_t *old = apr_shm_baseaddr_get(rt->shm);

        if (old->magic != WSP_SHM_MAGIC) {
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, "ws_persist: the "
                         "shared memory was laid out by another build of "
                         "the module; children of the previous generation "
                         "keep it until they exit");
        }
        else if (old->npools < npools * 2 || old->nslots < nslots * 2
                 || old->nrows < nrows) {
            /* too small for the new configuration: a new segment;
             * children still running keep the old one */
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, "ws_persist: the "
                         "configuration outgrew the shared memory; children "
                         "of the previous generation keep their own until "
                         "they exit");
        }
        else if ((rv = wsp_parent_trylock()) == APR_SUCCESS) {
            wsp_head = old;
            wsp_bind(wsp_head, cpools, wsp_gen, ptemp);
            wsp_nonce_publish(wsp_head, nonce);
            apr_global_mutex_unlock(wsp_mutex);
            return OK;
        }
        else {
            /* the old lock may never come back: the new generation gets
             * its own, and its own segment, as if it had outgrown it */
            ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, "ws_persist: the %s "
                         "lock stayed taken, by a child that died or "
                         "stopped holding it; the new generation gets a "
                         "lock and shared memory of its own, children of "
                         "the previous one keep theirs until they exit",
                         WSP_SHARED_MUTEX);
            if (wsp_mutex_make(rt, s, apr_psprintf(s->process->pool, "%u",
                                                   wsp_gen))
                != APR_SUCCESS) {
                return HTTP_INTERNAL_SERVER_ERROR;
            }
        }
    }
    {
        apr_shm_t *prev = rt->shm;

        /* headroom, so restarts that add a little reuse the segment */
        if ((rv = wsp_shared_make(rt, s, npools * 2 + 8, nslots * 2 + 32,
                                  nrows)) != APR_SUCCESS) {
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        wsp_head = apr_shm_baseaddr_get(rt->shm);
        wsp_bind(wsp_head, cpools, wsp_gen, ptemp);
        wsp_nonce_publish(wsp_head, nonce);
        if (prev) {
            wsp_shm_head_t *ph = apr_shm_baseaddr_get(prev);

            if (ph->magic == WSP_SHM_MAGIC) {
                /* read unlocked: counters, at worst a moment old */
                wsp_carry_over(wsp_head, ph);
                /* old children refuse the old forms too */
                wsp_nonce_publish(ph, nonce);
            }
            /* unmapped in the parent only: old children keep theirs */
            apr_shm_destroy(prev);
        }
    }
    return OK;
}

/* Rebuild a pool's view when slots changed since it was made (called by
 * wsp_pool_acquire under the lock). */
static void wsp_shared_sync(wsp_pool_t *pool)
{
    wsp_be_shared_t *slots;
    apr_array_header_t *out;
    apr_uint32_t i;

    if (!wsp_head || pool->index < 0 || pool->epoch == wsp_head->epoch) {
        return;
    }
    slots = wsp_slots_of(wsp_head);
    /* the config-time array is shared by every thread: one made from
     * this process's pool of views replaces it whole, and later the
     * other of two, so that a reader of its length outside the lock
     * never sees one half rebuilt, and members coming and going with
     * DNS answers do not grow the pool of views */
    out = pool->synced[pool->backends == pool->synced[0] ? 1 : 0];
    if (!out) {
        out = apr_array_make(wsp_vpool, 4, sizeof(wsp_backend_t *));
        pool->synced[pool->backends == pool->synced[0] ? 1 : 0] = out;
    }
    apr_array_clear(out);
    for (i = 0; i < wsp_head->nslots; ++i) {
        wsp_be_shared_t *st = &slots[i];
        wsp_backend_t *be = wsp_views[i];

        if (!wsp_slot_visible(st, wsp_gen) || st->pool != (apr_uint32_t)
            pool->index) {
            continue;
        }
        if (!be || strcmp(be->url, st->url)) {
            be = apr_pcalloc(wsp_vpool, sizeof(*be));
            if (wsp_backend_parse_slot(wsp_vpool, st->url, be)) {
                continue;           /* checked when it was added */
            }
            be->weight = st->weight;
            be->max_errors = st->max_errors;
            wsp_views[i] = be;
        }
        be->slot = (int)i;
        be->st = st;
        be->mine = wsp_row ? &wsp_row->counts[i] : NULL;
        APR_ARRAY_PUSH(out, wsp_backend_t *) = be;
    }
    pool->backends = out;
    pool->epoch = wsp_head->epoch;
}

static void wsp_shared_free_slot(wsp_backend_t *be)
{
    if (wsp_head && be->slot >= 0) {
        wsp_slot_free(wsp_head, be->st);
    }
}

apr_status_t wsp_shared_child_init(apr_pool_t *pchild, server_rec *s)
{
    static const wsp_pool_hooks_t hooks = {
        wsp_shared_lock, wsp_shared_unlock, wsp_shared_sync,
        wsp_shared_free_slot
    };
    apr_array_header_t *cpools = wsp_conf_pools();
    apr_allocator_t *alloc;
    apr_status_t rv;
    apr_uint32_t k;
    pid_t me = getpid();
    int i, j;

    if (!wsp_head) {
        return APR_SUCCESS;         /* no ws_persist pool configured */
    }
    rv = apr_global_mutex_child_init(&wsp_mutex, wsp_mutex_file, pchild);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ws_persist: cannot "
                     "attach the %s mutex", WSP_SHARED_MUTEX);
        return rv;
    }
    /* views are made under the pool lock while other threads allocate
     * elsewhere: a pool with an allocator of its own */
    if ((rv = apr_allocator_create(&alloc)) != APR_SUCCESS
        || (rv = apr_pool_create_unmanaged_ex(&wsp_vpool, NULL, alloc))
           != APR_SUCCESS) {
        return rv;
    }
    apr_allocator_owner_set(alloc, wsp_vpool);
    wsp_views = apr_pcalloc(wsp_vpool, wsp_head->nslots * sizeof(*wsp_views));

    apr_global_mutex_lock(wsp_mutex);
    wsp_reap(wsp_head);
    for (k = 0; k < wsp_head->nrows && !wsp_row; ++k) {
        wsp_row_t *row = wsp_row_of(wsp_head, k);

        if (row->pid == me
            || (row->pid && kill(row->pid, 0) && errno == ESRCH)) {
            wsp_row_reclaim(wsp_head, row);   /* a process gone uncounted */
        }
        if (!row->pid) {
            apr_atomic_set32(&row->dead, 0);
            row->pid = me;
            wsp_row = row;
        }
    }
    for (i = 0; cpools && i < cpools->nelts; ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(cpools, i, wsp_pool_t *);

        for (j = 0; j < pool->backends->nelts; ++j) {
            wsp_backend_t *be = APR_ARRAY_IDX(pool->backends, j,
                                              wsp_backend_t *);
            if (be->slot >= 0) {
                wsp_views[be->slot] = be;
                be->mine = wsp_row ? &wsp_row->counts[be->slot] : NULL;
            }
        }
    }
    apr_global_mutex_unlock(wsp_mutex);
    if (!wsp_row) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, "ws_persist: no free "
                     "row of pipe counts; if this child dies its pipes stay "
                     "counted");
    }
    wsp_pool_set_hooks(&hooks);
    return APR_SUCCESS;
}

/* The parent never takes the lock here: the child that died may hold it,
 * and some mechanisms (posixsem) never give a dead holder's lock back. It
 * only marks the row; the next process that takes the lock counts it out
 * (wsp_reap), before any pipe count is read. */
void wsp_shared_child_status(server_rec *s, pid_t pid, ap_generation_t gen,
                             int slot, mpm_child_status state)
{
    apr_uint32_t k;
    int marked = 0;

    (void)s;
    (void)gen;
    (void)slot;
    if (state != MPM_CHILD_EXITED || !wsp_head || pid <= 0) {
        return;
    }
    for (k = 0; k < wsp_head->nrows; ++k) {
        wsp_row_t *row = wsp_row_of(wsp_head, k);

        if (row->pid == pid) {
            apr_atomic_set32(&row->dead, (apr_uint32_t)pid);
            marked = 1;
        }
    }
    if (marked) {
        apr_atomic_inc32(&wsp_head->deaths);   /* after the mark */
    }
}

/* ---- views for the manager and mod_status ------------------------------- */

apr_array_header_t *wsp_shared_snapshot(apr_pool_t *p)
{
    apr_array_header_t *out;
    wsp_pool_shared_t *pools;
    wsp_be_shared_t *slots;
    apr_uint32_t i, k;

    if (!wsp_head) {
        return NULL;
    }
    out = apr_array_make(p, 4, sizeof(wsp_pool_info_t));
    pools = wsp_pools_of(wsp_head);
    slots = wsp_slots_of(wsp_head);
    wsp_shared_lock();
    for (i = 0; i < wsp_head->npools; ++i) {
        wsp_pool_info_t *pi;
        int added = 0;

        if (!pools[i].in_use || pools[i].retired_gen) {
            continue;
        }
        pi = apr_array_push(out);
        pi->name = apr_pstrdup(p, pools[i].name);
        pi->pipes = 0;
        pi->backends = apr_array_make(p, 4, sizeof(wsp_be_info_t));
        for (k = 0; k < wsp_head->nslots; ++k) {
            wsp_be_shared_t *st = &slots[k];
            wsp_be_info_t *bi;

            if (!st->in_use || st->retired || st->pool != i) {
                continue;
            }
            bi = apr_array_push(pi->backends);
            bi->url = apr_pstrdup(p, st->url);
            bi->state = wsp_backend_state_name(st);
            bi->weight = st->weight;
            bi->pipes = st->pipes;
            bi->consecutive_errors = st->consecutive_errors;
            bi->errors = st->errors;
            bi->served = st->served;
            bi->failovers = st->failovers;
            bi->bytes_in = apr_atomic_read64(&st->bytes_in);
            bi->bytes_out = apr_atomic_read64(&st->bytes_out);
            bi->added = st->added;
            bi->removing = st->removing;
            bi->check = st->hc_result == WSP_HCR_PASS ? "pass"
                        : st->hc_result == WSP_HCR_FAIL ? "fail" : NULL;
            bi->check_why = apr_pstrdup(p, st->hc_why);
            bi->check_at = st->hc_at;
            pi->pipes += st->pipes;
            added += st->added;
        }
        pi->free_slots = (int)pools[i].spare > added
                         ? (int)pools[i].spare - added : 0;
        pi->detached = (int)apr_atomic_read32(&pools[i].detached);
        pi->resumed = apr_atomic_read32(&pools[i].resumed);
        pi->expired = apr_atomic_read32(&pools[i].expired);
    }
    wsp_shared_unlock();
    return out;
}

void wsp_shared_session_event(const wsp_pool_t *pool, wsp_session_ev_e ev)
{
    wsp_pool_shared_t *ps;

    if (!wsp_head || !pool || pool->index < 0
        || (apr_uint32_t)pool->index >= wsp_head->npools) {
        return;
    }
    ps = &wsp_pools_of(wsp_head)[pool->index];
    switch (ev) {
    case WSP_SESSION_DETACHED:
        apr_atomic_inc32(&ps->detached);
        break;
    case WSP_SESSION_ATTACHED:
        apr_atomic_dec32(&ps->detached);
        break;
    case WSP_SESSION_RESUMED:
        apr_atomic_inc32(&ps->resumed);
        break;
    case WSP_SESSION_EXPIRED:
        apr_atomic_inc32(&ps->expired);
        break;
    }
}

const char *wsp_shared_check_text(apr_pool_t *p, const wsp_be_info_t *b)
{
    if (!b->check) {
        return "-";
    }
    return apr_pstrcat(p, b->check, *b->check_why ? ": " : "", b->check_why,
                       " (", ap_ht_time(p, b->check_at, "%Y-%m-%d %H:%M:%S",
                                        1), " UTC)", NULL);
}

int wsp_shared_process_pipes(void)
{
    int n = 0;
    apr_uint32_t k;

    if (!wsp_head || !wsp_row) {
        return 0;
    }
    for (k = 0; k < wsp_head->nslots; ++k) {
        n += (int)wsp_row->counts[k];
    }
    return n;
}

const char *wsp_shared_nonce(void)
{
    return wsp_head
           ? wsp_head->nonces[apr_atomic_read32(&wsp_head->nonce_at) & 1]
           : NULL;
}

apr_uint32_t wsp_shared_admin_epoch(void)
{
    return wsp_head ? wsp_head->admin_epoch : 0;
}

/* ---- administrator actions ---------------------------------------------- */

static int wsp_manage_add(apr_pool_t *p, int idx, const char *url,
                          const char **msg)
{
    wsp_pool_shared_t *ps = &wsp_pools_of(wsp_head)[idx];
    wsp_be_shared_t *slots = wsp_slots_of(wsp_head);
    wsp_backend_t be;
    const char *err;
    apr_uint32_t k, added = 0;
    int s;

    if ((err = wsp_backend_parse(p, url, &be))) {
        *msg = err;
        return HTTP_BAD_REQUEST;
    }
    if (strlen(url) >= WSP_URL_MAX) {
        *msg = apr_psprintf(p, "backend URL longer than %d characters",
                            WSP_URL_MAX - 1);
        return HTTP_BAD_REQUEST;
    }
    for (k = 0; k < wsp_head->nslots; ++k) {
        if (slots[k].in_use && !slots[k].retired
            && slots[k].pool == (apr_uint32_t)idx) {
            if (!strcmp(slots[k].url, url)) {
                *msg = apr_psprintf(p, "%s is already a backend of pool %s"
                                    "%s", url, ps->name, slots[k].removing
                                    ? " (being removed: enable it)" : "");
                return HTTP_CONFLICT;
            }
            added += slots[k].added;
        }
    }
    if (added >= ps->spare || (s = wsp_slot_take(wsp_head, NULL)) < 0) {
        *msg = apr_psprintf(p, "pool %s has no free backend slot "
                            "(WSPersistBackendSlots %u)", ps->name,
                            ps->spare);
        return HTTP_CONFLICT;
    }
    wsp_slot_init(wsp_head, s, (apr_uint32_t)idx, url, 1, 0);
    slots[s].added = 1;
    *msg = apr_psprintf(p, "%s added to pool %s", url, ps->name);
    return HTTP_OK;
}

int wsp_shared_manage(apr_pool_t *p, const char *action, const char *pool,
                      const char *url, const char **msg)
{
    static const char *const actions[] = {
        "add", "drain", "remove", "enable", "disable", NULL
    };
    wsp_be_shared_t *slots, *st = NULL;
    apr_uint32_t k;
    int a, idx, status = HTTP_OK;

    for (a = 0; actions[a] && (!action || strcmp(action, actions[a])); ++a)
        ;
    if (!action || !actions[a]) {
        *msg = apr_psprintf(p, "unknown action '%s' (add, drain, remove, "
                            "enable or disable)", action ? action : "");
        return HTTP_BAD_REQUEST;
    }
    if (!wsp_head) {
        *msg = "no ws_persist pool is configured";
        return HTTP_BAD_REQUEST;
    }
    if (!url || !*url) {
        *msg = "no backend URL given";
        return HTTP_BAD_REQUEST;
    }
    wsp_shared_lock();
    idx = pool ? wsp_pool_find_index(wsp_head, pool) : -1;
    if (idx < 0) {
        *msg = apr_psprintf(p, "unknown pool '%s'", pool ? pool : "");
        wsp_shared_unlock();
        return HTTP_BAD_REQUEST;
    }
    if (a == 0) {
        status = wsp_manage_add(p, idx, url, msg);
        if (status == HTTP_OK) {
            wsp_head->admin_epoch++;
        }
        wsp_shared_unlock();
        return status;
    }
    slots = wsp_slots_of(wsp_head);
    for (k = 0; k < wsp_head->nslots && !st; ++k) {
        if (slots[k].in_use && !slots[k].retired
            && slots[k].pool == (apr_uint32_t)idx
            && !strcmp(slots[k].url, url)) {
            st = &slots[k];
        }
    }
    if (!st) {
        *msg = apr_psprintf(p, "pool %s has no backend %s", pool, url);
        wsp_shared_unlock();
        return HTTP_BAD_REQUEST;
    }
    switch (a) {
    case 1:
        wsp_pool_drain(st, 0);
        break;
    case 2:
        wsp_pool_drain(st, 1);
        if (st->pipes <= 0) {
            wsp_slot_free(wsp_head, st);
        }
        break;
    case 3:
        wsp_pool_enable(st);
        break;
    default:
        wsp_pool_disable(st);
        break;
    }
    wsp_head->admin_epoch++;
    *msg = apr_psprintf(p, "%s: %s in pool %s", action, url, pool);
    wsp_shared_unlock();
    return status;
}

/* ---- members of name lines ---------------------------------------------- */

typedef struct {
    int level;
    const char *text;
} wsp_note_t;

static void wsp_note(apr_array_header_t *notes, int level, const char *text)
{
    wsp_note_t *n = apr_array_push(notes);

    n->level = level;
    n->text = text;
}

/* The distinct addresses of an answer, as text, in its order. */
static apr_array_header_t *wsp_answer_ips(apr_pool_t *p, apr_sockaddr_t *sa)
{
    apr_array_header_t *ips = apr_array_make(p, 4, sizeof(char *));
    char ip[64];
    int i;

    for (; sa; sa = sa->next) {
        apr_sockaddr_ip_getbuf(ip, sizeof(ip), sa);
        for (i = 0; i < ips->nelts
                    && strcmp(APR_ARRAY_IDX(ips, i, char *), ip); ++i)
            ;
        if (i == ips->nelts) {
            APR_ARRAY_PUSH(ips, char *) = apr_pstrdup(p, ip);
        }
    }
    return ips;
}

/* The log names this many of the addresses left out by max=. */
#define WSP_OVER_SHOWN 8

/* Under the lock: the members of one name line become its answer's
 * addresses. Members whose address left drain and go as a remove does
 * (back if it returns first); new addresses get a slot each, up to max=,
 * oldest members first so that a cap does not churn. */
static void wsp_members_sync(apr_pool_t *p, wsp_pool_t *pool,
                             wsp_backend_t *line, apr_array_header_t *ips,
                             apr_array_header_t *notes)
{
    wsp_be_shared_t *slots = wsp_slots_of(wsp_head);
    apr_uint32_t idx = (apr_uint32_t)pool->index, k;
    const char **names = apr_palloc(p, sizeof(char *) * (ips->nelts + 1));
    const char *rest = NULL;
    int i, kept = 0, over = 0;

    /* made once: an answer may hold thousands of addresses */
    for (i = 0; i < ips->nelts; ++i) {
        names[i] = wsp_member_name(p, line->url,
                                   APR_ARRAY_IDX(ips, i, char *));
    }

    for (k = 0; k < wsp_head->nslots; ++k) {
        wsp_be_shared_t *st = &slots[k];
        int found = 0;

        if (st->retired || !wsp_member_of_line(st, idx, line->url)) {
            continue;
        }
        for (i = 0; i < ips->nelts && !found; ++i) {
            found = !strcmp(st->url, names[i]);
        }
        if (found) {
            if (st->dns_gone) {
                st->dns_gone = 0;
                wsp_pool_enable(st);
                wsp_note(notes, APLOG_INFO, apr_psprintf(p, "ws_persist: "
                         "pool %s: backend %s stays: %s has its address "
                         "again", pool->name, st->url, line->host));
            }
            kept++;
        }
        else if (!st->dns_gone && !st->removing) {
            wsp_note(notes, APLOG_INFO, apr_psprintf(p, "ws_persist: pool "
                     "%s: backend %s leaves: %s no longer has its address",
                     pool->name, st->url, line->host));
            st->dns_gone = 1;
            wsp_pool_drain(st, 1);
            if (st->pipes <= 0) {
                wsp_slot_free(wsp_head, st);
            }
            wsp_head->admin_epoch++;
        }
    }
    for (i = 0; i < ips->nelts; ++i) {
        const char *ip = APR_ARRAY_IDX(ips, i, char *);
        const char *name = names[i];
        int s;

        for (k = 0; k < wsp_head->nslots; ++k) {
            if (!slots[k].retired
                && wsp_member_of_line(&slots[k], idx, line->url)
                && !strcmp(slots[k].url, name)) {
                break;
            }
        }
        if (k < wsp_head->nslots) {
            continue;
        }
        if (kept >= line->max_members
            || (s = wsp_slot_take(wsp_head, NULL)) < 0) {
            if (++over <= WSP_OVER_SHOWN) {
                rest = rest ? apr_pstrcat(p, rest, " ", ip, NULL) : ip;
            }
            continue;
        }
        wsp_slot_init(wsp_head, s, idx, name, line->weight,
                      line->max_errors);
        slots[s].member = 1;
        kept++;
        wsp_note(notes, APLOG_INFO, apr_psprintf(p, "ws_persist: pool %s: "
                 "backend %s joins: an address of %s", pool->name, name,
                 line->host));
    }
    /* a hostile or huge answer costs one line, not one per lookup */
    if (over && !line->capped) {
        wsp_note(notes, APLOG_WARNING, apr_psprintf(p, "ws_persist: pool "
                 "%s: backend host %s has %d addresses, more than max=%d "
                 "of %s: %d not used (%s%s)", pool->name, line->host,
                 ips->nelts, line->max_members, line->url, over, rest,
                 over > WSP_OVER_SHOWN ? " ..." : ""));
    }
    line->capped = over > 0;
}

void wsp_shared_members(server_rec *s, const char *host,
                        apr_sockaddr_t *addrs, apr_pool_t *p)
{
    apr_array_header_t *cpools = wsp_conf_pools(), *ips, *notes;
    int i, j;

    if (!wsp_head) {
        return;
    }
    ips = wsp_answer_ips(p, addrs);
    notes = apr_array_make(p, 4, sizeof(wsp_note_t));
    wsp_shared_lock();
    /* a child of an older generation, still finishing its pipes, has an
     * older configuration's lines: the members are the new one's */
    for (i = 0; wsp_head->gen == wsp_gen && cpools && i < cpools->nelts;
         ++i) {
        wsp_pool_t *pool = APR_ARRAY_IDX(cpools, i, wsp_pool_t *);

        for (j = 0; pool->index >= 0 && pool->names
                    && j < pool->names->nelts; ++j) {
            wsp_backend_t *line = APR_ARRAY_IDX(pool->names, j,
                                                wsp_backend_t *);

            if (!strcasecmp(line->host, host)) {
                wsp_members_sync(p, pool, line, ips, notes);
            }
        }
    }
    wsp_shared_unlock();
    /* logged with no lock held */
    for (i = 0; i < notes->nelts; ++i) {
        wsp_note_t *n = &APR_ARRAY_IDX(notes, i, wsp_note_t);

        ap_log_error(APLOG_MARK, n->level, 0, s, "%s", n->text);
    }
}
