/* The end of a session: close frames to either side, peers that went
 * away or broke the protocol, and when both closing handshakes are over
 * (or their time is). */
#include "apr_strings.h"

#include "wsp_pipe_int.h"

void wsp_client_gone(wsp_pipe_t *p, apr_time_t now, const char *why,
                     apr_status_t rv)
{
    wsp_hop_t *cl = p->client;

    if (cl->gone) {
        return;
    }
    cl->gone = 1;
    apr_brigade_cleanup(cl->out);
    cl->out_bytes = 0;
    /* a client being let go for a newer connection (its 1008 may fail
     * to go out) takes nothing with it: the session is the newer one's */
    if (wsp_closing(p) || p->handover == WSP_HANDOVER_HANDING) {
        return;
    }
    if (p->resumable && cl->upgraded && !cl->close_sent
        && !cl->close_rcvd) {
        wsp_detach(p, now, why, rv);
        return;
    }
    WSP_LOG(p, APLOG_INFO, rv, "client went away (%s)", why);
    wsp_begin_ending(p, now, "client went away");
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN) {
        p->b->close_pending = WSP_CLOSE_GOING_AWAY;
        p->b->close_pending_reason = "client went away";
    }
}

void wsp_begin_ending(wsp_pipe_t *p, apr_time_t now, const char *why)
{
    if (!wsp_closing(p)) {
        wsp_transit(p, WSP_ST_CLOSING, why);
        p->close_deadline = now + WSP_CLOSE_WAIT;
    }
}

/* Send the client a close frame; the pipe is ending. */
void wsp_client_close(wsp_pipe_t *p, apr_time_t now, int code,
                      const char *reason, apr_size_t rlen)
{
    wsp_hop_t *cl = p->client;
    unsigned char pl[WSP_CONTROL_MAX];

    if (!wsp_closing(p)) {
        char why[48];

        apr_snprintf(why, sizeof(why), "closing the client with %d", code);
        wsp_begin_ending(p, now, why);
    }
    if (!cl || cl->gone || cl->close_sent) {
        return;
    }
    wsp_client_ctrl(p, WSP_OP_CLOSE, pl,
                    wsp_close_payload(pl, code, reason, rlen));
    cl->close_sent = 1;
}

void wsp_client_violation(wsp_pipe_t *p, apr_time_t now, int code)
{
    const char *why = wsp_close_text(code);

    WSP_LOG(p, APLOG_INFO, 0, "client broke the protocol (%s): closing "
            "with %d", why, code);
    wsp_client_close(p, now, code, why, strlen(why));
    /* its stream cannot be parsed any more: read nothing further (no
     * close reply can be found in it) and close once our close is out */
    p->client->close_rcvd = 1;
    wsp_backend_going_away(p, "client error");
}

/* The session is over for the backend: an open one gets 1001 once what
 * is queued for it is written, one still connecting is dropped. */
void wsp_backend_going_away(wsp_pipe_t *p, const char *reason)
{
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN) {
        p->b->close_pending = WSP_CLOSE_GOING_AWAY;
        p->b->close_pending_reason = reason;
    }
    else {
        wsp_backend_drop(p);
    }
}

static int wsp_client_done(const wsp_pipe_t *p, apr_time_t now)
{
    const wsp_hop_t *cl = p->client;

    if (!cl || cl->gone) {
        return 1;
    }
    if (!cl->close_sent) {
        return 0;
    }
    if (!APR_BRIGADE_EMPTY(cl->out) || cl->c->data_in_output_filters) {
        return now >= p->close_deadline;
    }
    return cl->close_rcvd || now >= p->close_deadline;
}

static int wsp_backend_done(const wsp_pipe_t *p, apr_time_t now)
{
    if (!p->b->bc || p->b->bc->state != WSP_BC_OPEN) {
        return 1;
    }
    if (p->b->close_sent && p->b->close_rcvd && p->b->ctrl_off == p->b->ctrl_len
        && !p->b->owed.close_due) {
        return 1;
    }
    return now >= p->close_deadline;
}

void wsp_check_done(wsp_pipe_t *p, apr_time_t now)
{
    if (p->state != WSP_ST_CLOSING) {
        return;
    }
    if (p->b->bc && p->b->bc->state != WSP_BC_OPEN) {
        wsp_backend_drop(p);          /* a handshake is of no use now */
    }
    if (p->b2->bc && !p->b2->retiring) {
        wsp_aux_end(p);               /* nor a replacement */
    }
    if (now >= p->close_deadline && p->client && !p->client->gone
        && p->client->close_rcvd && !p->client->close_sent) {
        /* the backend never answered the close the client sent: the
         * client gets its reply now, and nobody is waited for longer */
        WSP_LOG(p, APLOG_INFO, 0, "no close reply from the backend in "
                "time: answering the client and ending");
        wsp_backend_drop(p);
        wsp_client_close(p, now, p->client->close_code,
                         p->client->close_reason,
                         strlen(p->client->close_reason));
        wsp_client_flush(p, now);
    }
    if (wsp_client_done(p, now) && wsp_backend_done(p, now)) {
        wsp_backend_drop(p);
        wsp_aux_end(p);
        wsp_transit(p, WSP_ST_DONE, "both hops closed");
    }
}

void wsp_pipe_going_away(wsp_pipe_t *p)
{
    apr_time_t now = apr_time_now();
    unsigned char pl[WSP_CONTROL_MAX];

    WSP_LOG(p, APLOG_INFO, 0, "server stopping: closing with 1001");
    wsp_client_close(p, now, WSP_CLOSE_GOING_AWAY, "server stopping", 15);
    if (p->b->bc && p->b->bc->state == WSP_BC_OPEN && !p->b->close_sent) {
        wsp_backend_ctrl(p, WSP_OP_CLOSE, pl, wsp_close_payload(pl,
                         WSP_CLOSE_GOING_AWAY, "client went away", 16));
        p->b->close_sent = 1;
    }
    wsp_client_flush(p, now);
    wsp_backend_flush(p, now);
    wsp_aux_end(p);
}
