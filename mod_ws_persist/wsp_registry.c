/* Client id -> pipe for this process, and the handover of a pipe from one
 * request's thread to another's in replace mode. */
#include "apr_hash.h"
#include "apr_thread_mutex.h"
#include "apr_thread_cond.h"

#include "apr_strings.h"

#include "wsp_parse.h"
#include "wsp_registry.h"

static apr_hash_t *wsp_pipes;
static apr_thread_mutex_t *wsp_reg_lock;
static apr_thread_cond_t *wsp_reg_cond;   /* a handover finished, or a
                                           * pipe ended */

apr_status_t wsp_registry_child_init(apr_pool_t *p)
{
    apr_pool_t *hp;
    apr_status_t rv;

    /* the hash grows from a pool used only under the registry's lock */
    if ((rv = apr_pool_create(&hp, p)) != APR_SUCCESS) {
        return rv;
    }
    wsp_pipes = apr_hash_make(hp);
    rv = apr_thread_mutex_create(&wsp_reg_lock, APR_THREAD_MUTEX_DEFAULT, p);
    if (rv == APR_SUCCESS) {
        rv = apr_thread_cond_create(&wsp_reg_cond, p);
    }
    return rv;
}

/* Whether the new connection may take the old pipe over: it must offer
 * the subprotocol the session has (RFC 6455 4.1: a 101 naming one it did
 * not offer fails the connection). */
static int wsp_registry_offers(const wsp_pipe_t *old, const char *offered)
{
    return !old->protocol
           || (offered && wsp_header_has_token(offered, old->protocol));
}

apr_status_t wsp_registry_claim(wsp_pipe_t *p, int how,
                                apr_interval_time_t wait,
                                wsp_pipe_t **taken)
{
    int replace = (how & WSP_CLAIM_REPLACE) != 0;
    apr_time_t until = apr_time_now() + wait;
    apr_status_t rv = APR_SUCCESS;
    wsp_pipe_t *old;

    *taken = NULL;
    apr_thread_mutex_lock(wsp_reg_lock);
    for (;;) {
        old = apr_hash_get(wsp_pipes, p->id, APR_HASH_KEY_STRING);
        if (!old && (how & WSP_CLAIM_RESUME)) {
            rv = APR_NOTFOUND;        /* no session to resume here */
            break;
        }
        if (!old) {
            apr_hash_set(wsp_pipes, p->id, APR_HASH_KEY_STRING, p);
            break;
        }
        if (!replace && !(how & WSP_CLAIM_RESUME) && !old->detached) {
            rv = APR_EEXIST;
            break;
        }
        if (old->handover == WSP_HANDOVER_DONE) {
            /* ours: the old driver let its client go */
            old->handover = WSP_HANDOVER_NONE;
            *taken = old;
            break;
        }
        /* a pipe is handed over once its protocol is settled (its first
         * backend answered): until then, wait */
        if (old->pinned && old->handover == WSP_HANDOVER_NONE) {
            if (!wsp_registry_offers(old, p->offered)) {
                rv = APR_EINVAL;
                break;
            }
            old->handover = WSP_HANDOVER_ASKED;
            if (old->wake) {
                old->wake(old->wake_baton);
            }
        }
        /* a handover under way finishes in a moment: not given up */
        if (apr_time_now() >= until
            && old->handover != WSP_HANDOVER_HANDING) {
            if (old->handover == WSP_HANDOVER_ASKED) {
                old->handover = WSP_HANDOVER_NONE;    /* withdrawn */
            }
            rv = APR_TIMEUP;
            break;
        }
        apr_thread_cond_timedwait(wsp_reg_cond, wsp_reg_lock,
                                  until > apr_time_now()
                                  ? until - apr_time_now()
                                  : apr_time_from_msec(10));
    }
    apr_thread_mutex_unlock(wsp_reg_lock);
    return rv;
}

int wsp_registry_begin_handover(wsp_pipe_t *p)
{
    int yes;

    apr_thread_mutex_lock(wsp_reg_lock);
    yes = p->handover == WSP_HANDOVER_ASKED;
    if (yes) {
        p->handover = WSP_HANDOVER_HANDING;
    }
    apr_thread_mutex_unlock(wsp_reg_lock);
    return yes;
}

void wsp_registry_pin(wsp_pipe_t *p, const char *protocol)
{
    apr_thread_mutex_lock(wsp_reg_lock);
    p->protocol = protocol ? apr_pstrdup(p->pool, protocol) : NULL;
    p->pinned = 1;
    apr_thread_cond_broadcast(wsp_reg_cond);
    apr_thread_mutex_unlock(wsp_reg_lock);
}

void wsp_registry_detached(wsp_pipe_t *p, int on)
{
    apr_thread_mutex_lock(wsp_reg_lock);
    p->detached = on;
    apr_thread_mutex_unlock(wsp_reg_lock);
}

void wsp_registry_remove(wsp_pipe_t *p)
{
    apr_thread_mutex_lock(wsp_reg_lock);
    if (apr_hash_get(wsp_pipes, p->id, APR_HASH_KEY_STRING) == p) {
        apr_hash_set(wsp_pipes, p->id, APR_HASH_KEY_STRING, NULL);
    }
    apr_thread_cond_broadcast(wsp_reg_cond);
    apr_thread_mutex_unlock(wsp_reg_lock);
}

void wsp_registry_handed_over(wsp_pipe_t *p)
{
    apr_thread_mutex_lock(wsp_reg_lock);
    p->handover = WSP_HANDOVER_DONE;
    p->wake = NULL;
    p->wake_baton = NULL;
    apr_thread_cond_broadcast(wsp_reg_cond);
    apr_thread_mutex_unlock(wsp_reg_lock);
}

void wsp_registry_set_wake(wsp_pipe_t *p, void (*fn)(void *), void *baton)
{
    apr_thread_mutex_lock(wsp_reg_lock);
    p->wake = fn;
    p->wake_baton = baton;
    if (fn && p->handover == WSP_HANDOVER_ASKED) {
        fn(baton);
    }
    apr_thread_mutex_unlock(wsp_reg_lock);
}

int wsp_registry_count(void)
{
    int n;

    apr_thread_mutex_lock(wsp_reg_lock);
    n = (int)apr_hash_count(wsp_pipes);
    apr_thread_mutex_unlock(wsp_reg_lock);
    return n;
}
