/* Sessions that outlive a client connection (DESIGN 7): with
 * WSPersistResumeWindow every backend message is numbered and kept in
 * the pipe's memory (wsp_retain.c); a client connection that drops
 * without a close frame detaches the session, and a new connection for
 * its id resumes it, given every kept message after its count. */
#include "apr_strings.h"

#include "wsp_pipe_int.h"
#include "wsp_registry.h"
#include "wsp_shared.h"

/* The client's connection dropped without a close frame: with
 * WSPersistResumeWindow the session stays, without its client. */
void wsp_detach(wsp_pipe_t *p, apr_time_t now, const char *why,
                apr_status_t rv)
{
    WSP_LOG(p, APLOG_INFO, rv, "client went away (%s): session detached "
            "for %" APR_TIME_T_FMT " ms, %" APR_UINT64_T_FMT " message(s) "
            "given to it, %" APR_SIZE_T_FMT " kept", why,
            apr_time_as_msec(p->conf->resume_window), p->rt.last,
            p->rt.count);
    p->detach_until = now + p->conf->resume_window;
    wsp_registry_detached(p, 1);
    wsp_shared_session_event(p->conf->pool, WSP_SESSION_DETACHED);
    if (p->state == WSP_ST_LIVE) {
        wsp_transit(p, WSP_ST_DETACHED, why);
    }
}

/* A detached session ends: its window is over, or what it keeps for the
 * client would pass the buffer limit. */
void wsp_detached_end(wsp_pipe_t *p, apr_time_t now, const char *why)
{
    WSP_LOG(p, APLOG_INFO, 0, "detached session ends (%s): backend gets "
            "1001", why);
    wsp_session_undetach(p, 0);
    wsp_begin_ending(p, now, why);
    wsp_backend_going_away(p, "client went away");
}

/* The session leaves the detached state: resumed, or over (it expired,
 * in the counters' words). */
void wsp_session_undetach(wsp_pipe_t *p, int resumed)
{
    if (p->detach_until) {
        p->detach_until = 0;
        wsp_registry_detached(p, 0);
        wsp_shared_session_event(p->conf->pool, WSP_SESSION_ATTACHED);
        wsp_shared_session_event(p->conf->pool, resumed
                                 ? WSP_SESSION_RESUMED : WSP_SESSION_EXPIRED);
    }
}

/* A data event from a backend of a resumable session: its frames are
 * built in the pipe's memory; a whole message is kept, numbered, and a
 * copy joins the client's output when there is a client. */
void wsp_backend_kept(wsp_pipe_t *p, wsp_hop_in_t *in, int ev)
{
    wsp_hop_t *cl = p->client;
    wsp_rmsg_t *m;

    if (ev == WSP_EV_DATA) {
        if (wsp_closing(p)) {
            in->drop = 1;
        }
        return;
    }
    if (ev != WSP_EV_MESSAGE) {
        return;
    }
    m = wsp_retain_push(&p->rt, in->msg);
    in->msg_bytes = 0;
    if (cl && !cl->gone && !cl->close_sent) {
        wsp_client_give(p, m);
    }
    else {
        wsp_detached_step(p, apr_time_now());   /* at once: the cap */
    }
}

/* A detached session's window, and its cap: what it keeps for the client
 * counts against WSPersistBufferLimit. */
void wsp_detached_step(wsp_pipe_t *p, apr_time_t now)
{
    if (!wsp_pipe_detached(p) || wsp_closing(p)) {
        return;
    }
    if (now >= p->detach_until) {
        wsp_detached_end(p, now, "resume window over");
    }
    else if (wsp_retain_unwritten(&p->rt) > p->conf->buffer_limit) {
        wsp_detached_end(p, now, "messages kept for the client passed "
                         "WSPersistBufferLimit");
    }
}

int wsp_pipe_resume(wsp_pipe_t *p, int has_n, apr_uint64_t n)
{
    wsp_rmsg_t *m;
    apr_uint64_t first;
    int res = wsp_retain_resume(&p->rt, has_n, n, &m), count = 0;

    if (res == WSP_RESUME_BEYOND) {
        WSP_LOG(p, APLOG_INFO, 0, "resume refused: the client says it "
                "received %" APR_UINT64_T_FMT " message(s), %"
                APR_UINT64_T_FMT " were sent", n, p->rt.last);
        return res;
    }
    if (res == WSP_RESUME_LOST) {
        WSP_LOG(p, APLOG_INFO, 0, "resume refused: message %"
                APR_UINT64_T_FMT " is no longer kept (WSPersistResumeBuffer"
                " %" APR_OFF_T_FMT ")", n + 1, p->conf->resume_buffer);
        return res;
    }
    first = m ? m->n : p->rt.last + 1;
    for (; m; m = wsp_rmsg_next(&p->rt, m)) {
        wsp_client_give(p, m);
        count++;
    }
    if (has_n) {
        WSP_LOG(p, APLOG_INFO, 0, "session resumed: the client received %"
                APR_UINT64_T_FMT " message(s), %d sent again", n, count);
    }
    else {
        WSP_LOG(p, APLOG_INFO, 0, "session resumed without a count: %d "
                "message(s) not completely written before sent again "
                "(from %" APR_UINT64_T_FMT ")", count, first);
    }
    wsp_session_undetach(p, 1);
    if (p->state == WSP_ST_DETACHED) {
        wsp_settle(p, "resumed");
    }
    return WSP_RESUME_OK;
}

void wsp_pipe_gone(wsp_pipe_t *p, const char *why)
{
    apr_time_t now = apr_time_now();

    WSP_LOG(p, APLOG_INFO, 0, "session ends (%s): closing the client with "
            "4410 and the backend with 1001", why);
    wsp_session_undetach(p, 0);
    wsp_client_close(p, now, WSP_CLOSE_SESSION_GONE, "session gone", 12);
    wsp_backend_going_away(p, "session gone");
}
