/* The ws-persist handler: checks the client's upgrade (DESIGN 2), finds
 * the client id, claims it, gets a first backend, answers 101 and runs the
 * pipe in this thread. */
#include "apr_strings.h"
#include "apr_lib.h"
#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_ssl.h"
#include "util_cookies.h"
#include "util_filter.h"

#include <uuid/uuid.h>

/* the query parameter a browser gives its resume count in (DESIGN 7) */
#define WSP_RECEIVED_PARAM "wsp_received"

#include "mod_ws_persist.h"
#include "wsp_config.h"
#include "wsp_evloop.h"
#include "wsp_handler.h"
#include "wsp_frame.h"
#include "wsp_handshake.h"
#include "wsp_loop.h"
#include "wsp_parse.h"
#include "wsp_pipe.h"
#include "wsp_registry.h"

/* A refused handshake: one log line naming the client and the reason. */
static int wsp_refuse(request_rec *r, int status, const char *id,
                      const char *why)
{
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "ws_persist: client %s (%s) backend -: %d: %s",
                  id ? id : "-", r->useragent_ip, status, why);
    if (status == HTTP_UPGRADE_REQUIRED) {
        apr_table_setn(r->err_headers_out, "Upgrade", "websocket");
        apr_table_setn(r->err_headers_out, "Sec-WebSocket-Version", "13");
    }
    return status;
}

/* Whether mod_http2 signals this stream's input on something to poll. */
static int wsp_h2_pollable(conn_rec *c)
{
    apr_pollfd_t pfd;

    memset(&pfd, 0, sizeof(pfd));
    return ap_get_pollfd_from_conn(c, &pfd, NULL) == APR_SUCCESS
           && pfd.desc_type == APR_POLL_FILE;
}

static int wsp_check_upgrade(request_rec *r, const char **key)
{
    const char *upgrade = apr_table_get(r->headers_in, "Upgrade");
    const char *conn = apr_table_get(r->headers_in, "Connection");
    const char *version = apr_table_get(r->headers_in,
                                        "Sec-WebSocket-Version");

    if (!upgrade) {
        return wsp_refuse(r, HTTP_UPGRADE_REQUIRED, NULL, "not an upgrade");
    }
    if (r->method_number != M_GET || r->header_only) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "upgrade is not a GET");
    }
    if (r->proto_num < HTTP_VERSION(1, 1)) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "upgrade before "
                          "HTTP/1.1");
    }
    if (!wsp_header_has_token(upgrade, "websocket")) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "Upgrade is not "
                          "websocket");
    }
    /* mod_http2 turns an RFC 8441 CONNECT into a GET with Upgrade and a
     * key of its own, but no Connection (HTTP/2 has none) */
    if (!r->connection->master
        && (!conn || !wsp_header_has_token(conn, "upgrade"))) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "Connection does not "
                          "list upgrade");
    }
    if (!version || strcmp(version, "13")) {
        return wsp_refuse(r, HTTP_UPGRADE_REQUIRED, NULL,
                          "Sec-WebSocket-Version is not 13");
    }
    *key = apr_table_get(r->headers_in, "Sec-WebSocket-Key");
    if (!*key || !wsp_key_valid(*key)) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "missing or invalid "
                          "Sec-WebSocket-Key");
    }
    return OK;
}

static const char *wsp_query_value(request_rec *r, const char *name)
{
    char *args, *tok, *last;
    apr_size_t nlen = strlen(name);

    if (!r->args) {
        return NULL;
    }
    args = apr_pstrdup(r->pool, r->args);
    for (tok = apr_strtok(args, "&", &last); tok;
         tok = apr_strtok(NULL, "&", &last)) {
        if (!strncmp(tok, name, nlen) && tok[nlen] == '=') {
            char *v = tok + nlen + 1;

            return ap_unescape_url(v) == OK ? v : NULL;
        }
    }
    return NULL;
}

/* The client id as configured, lower-cased; NULL when absent. */
static const char *wsp_client_id(request_rec *r, const wsp_dir_conf_t *conf,
                                 int *generated)
{
    const char *id = NULL;
    char *lc;

    *generated = 0;
    switch (conf->id_source) {
    case WSP_ID_PATH:
        id = strrchr(r->uri, '/');
        id = id ? id + 1 : NULL;
        break;
    case WSP_ID_HEADER:
        id = apr_table_get(r->headers_in, conf->id_name);
        break;
    case WSP_ID_QUERY:
        id = wsp_query_value(r, conf->id_name);
        break;
    case WSP_ID_COOKIE:
        if (ap_cookie_read(r, conf->id_name, &id, 0) != APR_SUCCESS) {
            id = NULL;
        }
        break;
    case WSP_ID_GENERATE: {
        uuid_t u;
        char *buf = apr_palloc(r->pool, 37);

        uuid_generate(u);
        uuid_unparse_lower(u, buf);
        *generated = 1;
        return buf;
    }
    }
    if (!id || !wsp_uuid_valid(id)) {
        return NULL;
    }
    lc = apr_pstrdup(r->pool, id);
    ap_str_tolower(lc);
    return lc;
}

/* What every backend handshake of this pipe carries. */
static void wsp_fill_request(wsp_pipe_t *p, request_rec *r,
                             const wsp_dir_conf_t *conf)
{
    static const char *const pass[] = { "Origin", "Cookie", "Authorization",
                                        "User-Agent", NULL };
    const char *path = r->parsed_uri.path ? r->parsed_uri.path : r->uri;
    const char *xff = apr_table_get(r->headers_in, "X-Forwarded-For");
    const char *host = apr_table_get(r->headers_in, "Host");
    const char *conn = apr_table_get(r->headers_in, "Connection");
    const char *v, *args = r->args;
    apr_pool_t *pool = p->pool;
    int i;

    if (conf->location) {
        apr_size_t n = strlen(conf->location);

        if (!strncmp(path, conf->location, n)) {
            path += n;
        }
    }
    /* The first client's fields live in the pipe's pool (a subpool costs
     * an idle pipe a block); a connection that takes the pipe over brings
     * its own, into a pool cleared at each takeover. */
    if (p->fwd) {
        if (!p->rpool) {
            apr_pool_create(&p->rpool, p->pool);
        }
        apr_pool_clear(p->rpool);
        pool = p->rpool;
    }
    p->fwd = apr_table_make(pool, 8);
    if (conf->resume_window > 0) {
        /* the resume count is the proxy's, never a backend's */
        int n;
        const char *v;

        args = wsp_query_take(r->pool, args, WSP_RECEIVED_PARAM, &n, &v);
    }
    p->rest = apr_pstrcat(pool, path, args ? "?" : "", args ? args : "",
                          NULL);
    p->client_ip = apr_pstrdup(pool, r->useragent_ip);
    v = apr_table_get(r->headers_in, "Sec-WebSocket-Protocol");
    p->offered = v ? apr_pstrdup(pool, v) : NULL;
    for (i = 0; pass[i]; i++) {
        /* a header the client's Connection names is hop-by-hop */
        if (conn && wsp_header_has_token(conn, pass[i])) {
            continue;
        }
        if ((v = apr_table_get(r->headers_in, pass[i]))) {
            apr_table_set(p->fwd, pass[i], v);
        }
    }
    apr_table_set(p->fwd, "X-Forwarded-For", xff
                  ? apr_pstrcat(r->pool, xff, ", ", r->useragent_ip, NULL)
                  : r->useragent_ip);
    if (host) {
        apr_table_set(p->fwd, "X-Forwarded-Host", host);
    }
    apr_table_set(p->fwd, "X-Forwarded-Proto",
                  ap_ssl_conn_is_ssl(r->connection) ? "https" : "http");
}

/* The client hop from now on is WebSocket over the connection filters. */
static void wsp_take_connection(request_rec *r)
{
    conn_rec *c = r->connection;

    ap_remove_input_filter_byhandle(c->input_filters, "reqtimeout");
    ap_remove_output_filter_byhandle(c->output_filters,
                                     "SSL/TLS Coalescing Filter");
    r->input_filters = r->proto_input_filters = c->input_filters;
    r->output_filters = r->proto_output_filters = c->output_filters;
    c->keepalive = AP_CONN_CLOSE;
    /* A zero timeout: whatever writes to the connection from now on (the
     * core's blocking paths, finishing the request, the lingering close)
     * gets EAGAIN instead of waiting for a client that does not read. An
     * HTTP/2 stream's socket is mod_http2's dummy, shared by all. */
    if (!c->master) {
        apr_socket_timeout_set(ap_get_conn_socket(c), 0);
    }
}

static void wsp_101(request_rec *r, const char *key, const char *protocol,
                    const char *gen_id, const char *session)
{
    char accept[WSP_ACCEPT_LEN + 1];

    wsp_accept_make(key, accept);
    r->status = HTTP_SWITCHING_PROTOCOLS;
    r->status_line = NULL;
    apr_table_clear(r->headers_out);
    apr_table_setn(r->headers_out, "Upgrade", "websocket");
    apr_table_setn(r->headers_out, "Connection", "Upgrade");
    apr_table_setn(r->headers_out, "Sec-WebSocket-Accept",
                   apr_pstrdup(r->pool, accept));
    if (protocol) {
        apr_table_setn(r->headers_out, "Sec-WebSocket-Protocol",
                       apr_pstrdup(r->pool, protocol));
    }
    if (gen_id) {
        apr_table_setn(r->headers_out, "X-WS-Persist-Client-Id", gen_id);
    }
    if (session) {
        apr_table_setn(r->headers_out, "X-WS-Persist-Session", session);
    }
    ap_send_interim_response(r, 1);
}

static void wsp_send_101(request_rec *r, wsp_pipe_t *p, const char *key,
                         int generated, const char *session)
{
    wsp_101(r, key, p->protocol, generated ? p->id : NULL,
            p->resumable ? session : NULL);
    wsp_pipe_upgraded(p);
}

/* A resume for a session this process does not hold (DESIGN 7): 101,
 * then close 4410 at once, so that a browser, which cannot read an HTTP
 * status of a WebSocket, learns it too. The 101 names the first
 * subprotocol offered: a browser fails a connection that offered some
 * and was given none. */
static int wsp_gone(request_rec *r, const char *key, const char *id,
                    const char *why)
{
    conn_rec *c = r->connection;
    const char *offered = apr_table_get(r->headers_in,
                                        "Sec-WebSocket-Protocol");
    char *proto = NULL, *last;
    unsigned char f[WSP_FRAME_HDR_MAX + WSP_CONTROL_MAX], pl[WSP_CONTROL_MAX];
    apr_size_t n, h;
    apr_bucket_brigade *bb;

    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "ws_persist: client %s "
                  "(%s) backend -: resume refused (%s): 101, then close "
                  "4410", id, r->useragent_ip, why);
    if (offered) {
        proto = apr_strtok(apr_pstrdup(r->pool, offered), ", \t", &last);
    }
    wsp_take_connection(r);
    wsp_101(r, key, proto, NULL, NULL);
    n = wsp_close_payload(pl, WSP_CLOSE_SESSION_GONE, "session gone", 12);
    h = wsp_frame_header(f, 1, WSP_OP_CLOSE, n, NULL);
    memcpy(f + h, pl, n);
    bb = apr_brigade_create(r->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create((const char *)f,
                            h + n, NULL, c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
    ap_pass_brigade(c->output_filters, bb);
    apr_brigade_cleanup(bb);
    return DONE;
}

/* A resume's count of backend messages the client received: header
 * X-WS-Persist-Received, or the query parameter browsers can set. One
 * decimal count, else 400. */
static int wsp_received_count(request_rec *r, int *has_n, apr_uint64_t *n)
{
    const char *h = apr_table_get(r->headers_in, "X-WS-Persist-Received");
    const char *v = NULL;
    int count = 0;

    *has_n = 0;
    wsp_query_take(r->pool, r->args, WSP_RECEIVED_PARAM, &count, &v);
    if (h && count) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "both the "
                          "X-WS-Persist-Received header and the "
                          WSP_RECEIVED_PARAM " parameter");
    }
    if (count > 1) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, WSP_RECEIVED_PARAM
                          " given more than once");
    }
    if (h) {
        v = h;
    }
    if (!v) {
        return OK;
    }
    if (!wsp_parse_count(v, strlen(v), n)) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, apr_psprintf(r->pool,
                          "received count \"%s\" is not a decimal count",
                          ap_escape_logitem(r->pool, v)));
    }
    *has_n = 1;
    return OK;
}

/* Under the event MPM the pipe goes to the child's loop and this thread
 * is free; otherwise this thread runs it to the end. An HTTP/2 stream is
 * always run here: mod_http2 ends the stream when the handler returns, and
 * a SUSPENDED stream would be nobody's. */
static int wsp_run(request_rec *r, wsp_pipe_t *p)
{
    if (wsp_evloop_available() && !r->connection->master) {
        /* The event MPM closes an aborted connection even when the
         * handler suspended it: then the MPM owns it, and the pipe must
         * end here, or two parties would close one connection. */
        if (r->connection->aborted) {
            WSP_LOG(p, APLOG_INFO, 0, "client went away during the "
                    "upgrade");
            wsp_pipe_end(p);
            return DONE;
        }
        wsp_evloop_mark(r, p);
        return SUSPENDED;
    }
    if (wsp_loop_run(p, r) != WSP_LOOP_HANDED_OVER) {
        wsp_pipe_end(p);
    }
    return DONE;
}

int wsp_handler(request_rec *r)
{
    wsp_dir_conf_t *conf;
    wsp_pipe_t *p, *taken;
    const char *key = NULL, *id, *origin;
    int status, generated, has_n = 0, how;
    apr_uint64_t n = 0;
    apr_status_t rv;

    if (!r->handler || strcmp(r->handler, WSP_HANDLER)) {
        return DECLINED;
    }
    conf = ap_get_module_config(r->per_dir_config, &ws_persist_module);
    if (!conf->pool
        || (conf->pool->backends->nelts == 0 && !conf->pool->names)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ws_persist: client - "
                      "(%s) backend -: no WSPersistBackend for %s",
                      r->useragent_ip, r->uri);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if ((status = wsp_check_upgrade(r, &key)) != OK) {
        return status;
    }
    /* mod_http2 hands an RFC 8441 stream over as an upgrade; its input
     * is polled on a pipe mod_http2 signals, which needs httpd 2.4.58+ */
    if (r->connection->master && !wsp_h2_pollable(r->connection)) {
        return wsp_refuse(r, HTTP_NOT_IMPLEMENTED, NULL, "WebSockets over "
                          "HTTP/2 need mod_http2 with pollable stream input;"
                          " the client may retry over HTTP/1.1");
    }
    /* Browsers always send Origin; other clients may send none. */
    if ((origin = apr_table_get(r->headers_in, "Origin"))
        && !wsp_conf_origin_allowed(conf, origin)) {
        return wsp_refuse(r, HTTP_FORBIDDEN, NULL, apr_psprintf(r->pool,
                          "Origin \"%s\" is not allowed",
                          ap_escape_logitem(r->pool, origin)));
    }
    if (!(id = wsp_client_id(r, conf, &generated))) {
        return wsp_refuse(r, HTTP_BAD_REQUEST, NULL, "client id missing or "
                          "not a UUID");
    }
    if (conf->resume_window > 0 && !generated
        && (status = wsp_received_count(r, &has_n, &n)) != OK) {
        return status;
    }
    if ((rv = wsp_pipe_create(&p, r, conf, id)) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, "ws_persist: client %s "
                      "(%s) backend -: cannot create a pipe", id,
                      r->useragent_ip);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    wsp_fill_request(p, r, conf);
    how = (conf->dup_replace ? WSP_CLAIM_REPLACE : 0)
          | (has_n ? WSP_CLAIM_RESUME : 0);
    rv = wsp_registry_claim(p, how, conf->connect_timeout, &taken);
    if (rv != APR_SUCCESS) {
        wsp_pipe_destroy(p);
        if (rv == APR_NOTFOUND) {
            return wsp_gone(r, key, id, "no such session in this process");
        }
        if (rv == APR_EEXIST) {
            return wsp_refuse(r, HTTP_CONFLICT, id, "client id is live");
        }
        if (rv == APR_EINVAL) {
            return wsp_refuse(r, HTTP_BAD_REQUEST, id, "the live session's "
                              "subprotocol is not offered");
        }
        apr_table_setn(r->err_headers_out, "Retry-After", "1");
        return wsp_refuse(r, HTTP_SERVICE_UNAVAILABLE, id, "the live pipe "
                          "did not let go in time");
    }
    if (taken) {
        int res = WSP_RESUME_OK;

        wsp_pipe_destroy(p);
        p = taken;
        wsp_fill_request(p, r, conf);
        wsp_take_connection(r);
        wsp_pipe_attach(p, r);
        WSP_LOG(p, APLOG_INFO, 0, "took over the live pipe");
        if (p->resumable) {
            res = wsp_pipe_resume(p, has_n, n);
        }
        if (res != WSP_RESUME_OK) {
            wsp_send_101(r, p, key, generated, NULL);
            wsp_pipe_gone(p, res == WSP_RESUME_LOST ? "message after the "
                          "client's count no longer kept" : "client's "
                          "count beyond what it was sent");
        }
        else {
            wsp_send_101(r, p, key, generated, "resumed");
        }
        return wsp_run(r, p);
    }
    wsp_pipe_attach(p, r);
    if (wsp_loop_run(p, r) != WSP_LOOP_LIVE) {
        int after = wsp_pool_retry_after(conf->pool, apr_time_now());

        wsp_pipe_end(p);
        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_itoa(r->pool, after));
        return HTTP_SERVICE_UNAVAILABLE;
    }
    wsp_take_connection(r);
    wsp_send_101(r, p, key, generated, "new");
    return wsp_run(r, p);
}
