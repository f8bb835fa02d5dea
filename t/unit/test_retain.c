/* Backend messages kept for a resume (wsp_retain.c): numbering, the
 * written mark, the byte limit, acknowledgements and where a resume
 * starts. */

#include <apr_buckets.h>
#include <apr_strings.h>

#include "wsp_test.h"
#include "wsp_queue.h"
#include "wsp_retain.h"

/* One unmasked text frame with a payload under 126 bytes. */
static wsp_rmsg_t *push(wsp_retain_t *rt, apr_pool_t *p, const char *text)
{
    apr_bucket_brigade *bb = apr_brigade_create(p, rt->ba);
    apr_size_t n = strlen(text);
    char *buf = apr_bucket_alloc(n + 2, rt->ba);

    buf[0] = (char)0x81;
    buf[1] = (char)n;
    memcpy(buf + 2, text, n);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create(buf, n + 2,
                            apr_bucket_free, rt->ba));
    return wsp_retain_push(rt, bb);
}

/* Push messages "m<first>".."m<last>" as if given to a connection whose
 * output was at *off, each ending where it ends there. */
static void give(wsp_retain_t *rt, apr_pool_t *p, int first, int last,
                 apr_off_t *off)
{
    int i;

    for (i = first; i <= last; i++) {
        wsp_rmsg_t *m = push(rt, p, apr_psprintf(p, "m%d", i));

        *off += (apr_off_t)m->len;
        m->end = *off;
    }
}

static wsp_retain_t *mk(apr_pool_t *p, apr_off_t limit)
{
    wsp_retain_t *rt = apr_pcalloc(p, sizeof(*rt));

    wsp_retain_init(rt, apr_bucket_alloc_create(p), limit);
    return rt;
}

static void test_push_numbers_and_copies(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 1 << 20);
    apr_bucket_brigade *bb = apr_brigade_create(p, rt->ba);
    wsp_rmsg_t *a, *b;

    a = push(rt, p, "hello");
    b = push(rt, p, "you");
    CHECK_INT(a->n, 1);
    CHECK_INT(b->n, 2);
    CHECK_INT(a->len, 7);
    CHECK(!memcmp(wsp_rmsg_data(a), "\x81\x05hello", 7));
    CHECK(!memcmp(wsp_rmsg_data(b), "\x81\x03you", 5));
    CHECK_INT(a->end, -1);
    CHECK_INT(rt->count, 2);
    CHECK_INT(rt->last, 2);
    CHECK_INT(rt->written, 0);
    CHECK_INT(rt->cost, a->cost + b->cost);
    CHECK_INT(wsp_retain_unwritten(rt), rt->cost);
    CHECK(wsp_rmsg_next(rt, a) == b);
    CHECK(wsp_rmsg_next(rt, b) == NULL);
    /* the message brigade is left empty */
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_immortal_create("\x81\x01x", 3,
                            rt->ba));
    wsp_retain_push(rt, bb);
    CHECK(APR_BRIGADE_EMPTY(bb));
    wsp_retain_clear(rt);
    CHECK_INT(rt->count, 0);
    CHECK_INT(rt->cost, 0);
}

static void test_flushed_marks_written(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 1 << 20);
    apr_off_t off = 0;

    give(rt, p, 1, 3, &off);          /* 4 bytes each: ends 4, 8, 12 */
    wsp_retain_flushed(rt, 7);        /* the second is cut */
    CHECK_INT(rt->written, 1);
    wsp_retain_flushed(rt, 8);
    CHECK_INT(rt->written, 2);
    CHECK_INT(rt->count, 3);          /* written ones stay, in the limit */
    CHECK_INT(wsp_retain_unwritten(rt), rt->cost / 3);
    wsp_retain_flushed(rt, 100);
    CHECK_INT(rt->written, 3);
    CHECK_INT(wsp_retain_unwritten(rt), 0);
    /* a message not on this connection stops the mark */
    push(rt, p, "m4");
    give(rt, p, 5, 5, &off);
    wsp_retain_flushed(rt, 1000);
    CHECK_INT(rt->written, 3);
    wsp_retain_clear(rt);
}

static void test_limit_drops_oldest_written(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 0);
    apr_off_t off = 0, one;

    give(rt, p, 1, 4, &off);
    one = rt->cost / 4;
    rt->limit = 2 * one;
    wsp_retain_flushed(rt, 12);       /* 1..3 written: one over the limit */
    CHECK_INT(rt->written, 3);
    CHECK_INT(rt->count, 3);          /* 2, 3 and the unwritten 4 */
    CHECK_INT(rt->wcost, 2 * one);
    CHECK_INT(APR_RING_FIRST(&rt->ring)->n, 2);
    /* an unwritten one is never dropped by the limit */
    rt->limit = 0;
    wsp_retain_flushed(rt, 12);
    CHECK_INT(rt->count, 1);
    CHECK_INT(APR_RING_FIRST(&rt->ring)->n, 4);
    wsp_retain_clear(rt);
}

static void test_ack_frees(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 1 << 20);
    apr_off_t off = 0;

    give(rt, p, 1, 5, &off);
    wsp_retain_flushed(rt, 8);        /* 1, 2 written */
    wsp_retain_ack(rt, 1);
    CHECK_INT(rt->count, 4);
    CHECK_INT(rt->written, 2);
    /* the client has more than was known written */
    wsp_retain_ack(rt, 4);
    CHECK_INT(rt->count, 1);
    CHECK_INT(rt->written, 4);
    CHECK_INT(rt->wcost, 0);
    CHECK(rt->next_w == APR_RING_FIRST(&rt->ring));
    wsp_retain_flushed(rt, 20);
    CHECK_INT(rt->written, 5);
    /* beyond the newest counts as the newest */
    wsp_retain_ack(rt, 99);
    CHECK_INT(rt->count, 0);
    CHECK_INT(rt->written, 5);
    CHECK_INT(rt->cost, 0);
    CHECK(rt->next_w == NULL);
    give(rt, p, 6, 6, &off);
    CHECK(rt->next_w != NULL && rt->next_w->n == 6);
    wsp_retain_clear(rt);
}

static void test_resume_with_count(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 1 << 20);
    wsp_rmsg_t *from;
    apr_off_t off = 0;

    give(rt, p, 1, 6, &off);
    wsp_retain_flushed(rt, 24);       /* all six written */
    /* the client got only 1..3: the kernel held the rest */
    CHECK_INT(wsp_retain_resume(rt, 1, 3, &from), WSP_RESUME_OK);
    CHECK(from && from->n == 4);
    CHECK_INT(rt->count, 3);
    CHECK_INT(rt->written, 3);
    CHECK_INT(rt->wcost, 0);
    CHECK_INT(from->end, -1);
    CHECK_INT(wsp_rmsg_next(rt, from)->end, -1);
    /* all of it: nothing to send */
    CHECK_INT(wsp_retain_resume(rt, 1, 6, &from), WSP_RESUME_OK);
    CHECK(from == NULL);
    CHECK_INT(rt->count, 0);
    /* beyond what was sent */
    CHECK_INT(wsp_retain_resume(rt, 1, 7, &from), WSP_RESUME_BEYOND);
    wsp_retain_clear(rt);
}

static void test_resume_lost(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 0);
    wsp_rmsg_t *from;
    apr_off_t off = 0;

    give(rt, p, 1, 4, &off);
    wsp_retain_flushed(rt, 8);        /* 1, 2 written and dropped */
    CHECK_INT(rt->count, 2);
    CHECK_INT(wsp_retain_resume(rt, 1, 0, &from), WSP_RESUME_LOST);
    CHECK_INT(wsp_retain_resume(rt, 1, 1, &from), WSP_RESUME_LOST);
    CHECK_INT(rt->count, 2);          /* a refusal changes nothing */
    CHECK_INT(wsp_retain_resume(rt, 1, 2, &from), WSP_RESUME_OK);
    CHECK(from && from->n == 3);
    wsp_retain_clear(rt);
    /* nothing kept, nothing missed */
    CHECK_INT(wsp_retain_resume(rt, 1, 4, &from), WSP_RESUME_OK);
    CHECK(from == NULL);
    CHECK_INT(wsp_retain_resume(rt, 1, 3, &from), WSP_RESUME_LOST);
}

static void test_resume_without_count(apr_pool_t *p)
{
    wsp_retain_t *rt = mk(p, 1 << 20);
    wsp_rmsg_t *from;
    apr_off_t off = 0;

    give(rt, p, 1, 4, &off);
    wsp_retain_flushed(rt, 9);        /* 1, 2 written, 3 cut */
    CHECK_INT(wsp_retain_resume(rt, 0, 0, &from), WSP_RESUME_OK);
    CHECK(from && from->n == 3);
    CHECK_INT(rt->count, 4);          /* written ones stay for a count */
    /* the new connection is given 3 and 4 again */
    off = 0;
    for (; from; from = wsp_rmsg_next(rt, from)) {
        off += (apr_off_t)from->len;
        from->end = off;
    }
    wsp_retain_flushed(rt, 8);
    CHECK_INT(rt->written, 4);
    wsp_retain_clear(rt);
}

WSP_TEST_MAIN(
    RUN(test_push_numbers_and_copies);
    RUN(test_flushed_marks_written);
    RUN(test_limit_drops_oldest_written);
    RUN(test_ack_frees);
    RUN(test_resume_with_count);
    RUN(test_resume_lost);
    RUN(test_resume_without_count);
)
