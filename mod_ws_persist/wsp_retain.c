/* Backend messages kept for a resume; see include/wsp_retain.h.
 * Invariants: records are numbered last - count + 1 .. last, oldest
 * first; those numbered <= written come first and cost wcost; next_w is
 * the first record numbered > written. */

#include "wsp_queue.h"
#include "wsp_retain.h"

#define WSP_RMSG_HDR APR_ALIGN_DEFAULT(sizeof(wsp_rmsg_t))

void wsp_retain_init(wsp_retain_t *rt, apr_bucket_alloc_t *ba,
                     apr_off_t limit)
{
    memset(rt, 0, sizeof(*rt));
    APR_RING_INIT(&rt->ring, wsp_rmsg_t, link);
    rt->ba = ba;
    rt->limit = limit;
}

const char *wsp_rmsg_data(const wsp_rmsg_t *m)
{
    return (const char *)m + WSP_RMSG_HDR;
}

wsp_rmsg_t *wsp_rmsg_next(const wsp_retain_t *rt, const wsp_rmsg_t *m)
{
    wsp_rmsg_t *n = APR_RING_NEXT(m, link);

    return n == APR_RING_SENTINEL(&rt->ring, wsp_rmsg_t, link) ? NULL : n;
}

static wsp_rmsg_t *wsp_retain_first(const wsp_retain_t *rt)
{
    return APR_RING_EMPTY(&rt->ring, wsp_rmsg_t, link)
           ? NULL : APR_RING_FIRST(&rt->ring);
}

wsp_rmsg_t *wsp_retain_push(wsp_retain_t *rt, apr_bucket_brigade *msg)
{
    apr_off_t len = 0;
    apr_size_t n;
    wsp_rmsg_t *m;

    apr_brigade_length(msg, 0, &len);
    m = apr_bucket_alloc(WSP_RMSG_HDR + (apr_size_t)len, rt->ba);
    n = (apr_size_t)len;
    apr_brigade_flatten(msg, (char *)m + WSP_RMSG_HDR, &n);
    apr_brigade_cleanup(msg);
    APR_RING_ELEM_INIT(m, link);
    m->n = ++rt->last;
    m->len = n;
    m->cost = (apr_off_t)wsp_frame_cost(WSP_RMSG_HDR + n);
    m->end = -1;
    APR_RING_INSERT_TAIL(&rt->ring, m, wsp_rmsg_t, link);
    rt->cost += m->cost;
    rt->count++;
    if (!rt->next_w) {
        rt->next_w = m;
    }
    return m;
}

static void wsp_retain_free_first(wsp_retain_t *rt)
{
    wsp_rmsg_t *m = wsp_retain_first(rt);

    if (m == rt->next_w) {
        rt->next_w = wsp_rmsg_next(rt, m);
    }
    if (m->n <= rt->written) {
        rt->wcost -= m->cost;
    }
    rt->cost -= m->cost;
    rt->count--;
    APR_RING_REMOVE(m, link);
    apr_bucket_free(m);
}

static void wsp_retain_trim(wsp_retain_t *rt)
{
    wsp_rmsg_t *m;

    while (rt->wcost > rt->limit && (m = wsp_retain_first(rt))
           && m->n <= rt->written) {
        wsp_retain_free_first(rt);
    }
}

void wsp_retain_flushed(wsp_retain_t *rt, apr_off_t flushed)
{
    wsp_rmsg_t *m;

    while ((m = rt->next_w) && m->end >= 0 && m->end <= flushed) {
        rt->written = m->n;
        rt->wcost += m->cost;
        rt->next_w = wsp_rmsg_next(rt, m);
    }
    wsp_retain_trim(rt);
}

void wsp_retain_ack(wsp_retain_t *rt, apr_uint64_t n)
{
    wsp_rmsg_t *m;

    if (n > rt->last) {
        n = rt->last;
    }
    while ((m = wsp_retain_first(rt)) && m->n <= n) {
        wsp_retain_free_first(rt);
    }
    if (n > rt->written) {
        /* what is left is all numbered above n */
        rt->written = n;
        rt->wcost = 0;
        rt->next_w = wsp_retain_first(rt);
    }
}

apr_off_t wsp_retain_unwritten(const wsp_retain_t *rt)
{
    return rt->cost - rt->wcost;
}

int wsp_retain_resume(wsp_retain_t *rt, int has_n, apr_uint64_t n,
                      wsp_rmsg_t **from)
{
    wsp_rmsg_t *m;

    *from = NULL;
    if (has_n) {
        m = wsp_retain_first(rt);
        if (n > rt->last) {
            return WSP_RESUME_BEYOND;
        }
        /* n + 1 .. last must all be here: they are contiguous up to last,
         * so the oldest must be n + 1 or older */
        if (n < rt->last && (!m || m->n > n + 1)) {
            return WSP_RESUME_LOST;
        }
        wsp_retain_ack(rt, n);
        /* what was written past n did not reach the client */
        rt->written = n;
        rt->wcost = 0;
        rt->next_w = wsp_retain_first(rt);
    }
    for (m = wsp_retain_first(rt); m; m = wsp_rmsg_next(rt, m)) {
        m->end = -1;
    }
    *from = rt->next_w;
    return WSP_RESUME_OK;
}

void wsp_retain_clear(wsp_retain_t *rt)
{
    while (wsp_retain_first(rt)) {
        wsp_retain_free_first(rt);
    }
    rt->next_w = NULL;
}
