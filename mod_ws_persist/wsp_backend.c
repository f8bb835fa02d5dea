/* A backend connection up to and including its opening handshake.
 *
 * ws:// backends are a non-blocking socket used directly. wss://
 * backends go through mod_ssl: the TLS layer is in wsp_tls.c, whose head
 * comment says how, and why mod_ssl's handshake runs on a coroutine.
 * Addresses come from the resolver (wsp_resolve.c), which looks names up
 * in a thread of its own: a connect never waits for DNS. */
#include <pthread.h>
#include <stdlib.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <apr_portable.h>
#include <apr_strings.h>

#include "httpd.h"

#include "mod_ws_persist.h"
#include "wsp_backend.h"
#include "wsp_resolve.h"
#include "wsp_sock.h"
#include "wsp_tls.h"

const char *wsp_bconn_errtext(apr_pool_t *p, const char *what,
                              apr_status_t rv)
{
    char buf[120];

    return apr_psprintf(p, "%s: %s", what, apr_strerror(rv, buf,
                                                        sizeof(buf)));
}

apr_status_t wsp_bconn_open(wsp_bconn_t **out, apr_pool_t *parent,
                            server_rec *s, wsp_backend_t *be,
                            wsp_request_fn *build,
                            void *baton, const char *offered,
                            int require_protocol)
{
    apr_pool_t *p;
    wsp_bconn_t *bc;
    const char *key;
    apr_status_t rv;

    *out = NULL;
    if ((rv = apr_pool_create(&p, parent)) != APR_SUCCESS) {
        return rv;
    }
    bc = apr_pcalloc(p, sizeof(*bc));
    bc->pool = p;
    bc->s = s;
    bc->be = be;
    /* the request and the parsed answer are gone once the handshake is:
     * an open connection holds only what it uses */
    if ((rv = apr_pool_create(&bc->hpool, p)) != APR_SUCCESS) {
        apr_pool_destroy(p);
        return rv;
    }
    key = wsp_key_make(bc->hpool);
    bc->req = build(baton, bc->hpool, key);
    bc->req_len = strlen(bc->req);
    bc->offered = offered ? apr_pstrdup(p, offered) : NULL;
    bc->require_protocol = require_protocol;
    wsp_accept_make(key, bc->accept);

    rv = be->ip ? wsp_resolve_numeric_addr(&bc->addr, be->ip, be->port, p)
                : wsp_resolve_addr(&bc->addr, be->host, be->port, p);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_DEBUG, rv, s, "ws_persist: backend "
                     "%s: %s: %s", be->url, be->ip ? be->ip : be->host,
                     rv == WSP_RESOLVE_PENDING ? "not resolved yet"
                                               : "does not resolve");
    }
    else {
        rv = apr_socket_create(&bc->sock, bc->addr->family, SOCK_STREAM,
                               APR_PROTO_TCP, p);
    }
    if (rv == APR_SUCCESS) {
        apr_socket_opt_set(bc->sock, APR_SO_NONBLOCK, 1);
        apr_socket_timeout_set(bc->sock, 0);
        apr_socket_opt_set(bc->sock, APR_TCP_NODELAY, 1);
        rv = apr_socket_connect(bc->sock, bc->addr);
        if (rv == APR_SUCCESS) {
            bc->state = be->tls ? WSP_BC_TLS : WSP_BC_SENDING;
        }
        else if (APR_STATUS_IS_EINPROGRESS(rv)) {
            bc->state = WSP_BC_CONNECTING;
            rv = APR_SUCCESS;
        }
    }
    if (rv != APR_SUCCESS) {
        wsp_bconn_close(bc);
        return rv;
    }
    *out = bc;
    return APR_SUCCESS;
}

apr_int16_t wsp_bconn_handshake_events(const wsp_bconn_t *bc)
{
    if (bc->tls) {
        return wsp_tls_handshake_events(bc);
    }
    return bc->state == WSP_BC_READING ? APR_POLLIN : APR_POLLOUT;
}

int wsp_bconn_request(wsp_bconn_t *bc, const char **why)
{
    apr_status_t rv;
    int res;

    if (bc->state == WSP_BC_CONNECTING) {
        /* A second connect() reports how the first one ended. */
        rv = apr_socket_connect(bc->sock, bc->addr);
        if (APR_STATUS_IS_EINPROGRESS(rv)
            || rv == APR_FROM_OS_ERROR(EALREADY)) {
            return WSP_HS_MORE;
        }
        if (rv != APR_SUCCESS && rv != APR_FROM_OS_ERROR(EISCONN)) {
            *why = wsp_bconn_errtext(bc->pool, "connect", rv);
            return WSP_HS_FAIL;
        }
        bc->state = bc->be->tls ? WSP_BC_TLS : WSP_BC_SENDING;
    }
    if (bc->state == WSP_BC_TLS) {
        if ((res = wsp_tls_handshake(bc, why)) != WSP_HS_OK) {
            return res;
        }
        bc->state = WSP_BC_SENDING;
    }
    if (bc->state == WSP_BC_SENDING && !bc->req_len) {
        bc->state = WSP_BC_READING;      /* a TCP check sends nothing */
    }
    while (bc->state == WSP_BC_SENDING) {
        apr_size_t n = bc->req_len - bc->req_off;

        rv = wsp_bconn_send(bc, bc->req + bc->req_off, &n);
        bc->req_off += n;
        if (bc->req_off == bc->req_len) {
            bc->state = WSP_BC_READING;
        }
        else if (APR_STATUS_IS_EAGAIN(rv)) {
            return WSP_HS_MORE;
        }
        else if (rv != APR_SUCCESS) {
            *why = wsp_bconn_errtext(bc->pool, "sending the handshake",
                                     rv);
            return WSP_HS_FAIL;
        }
    }
    return WSP_HS_OK;
}

int wsp_bconn_handshake(wsp_bconn_t *bc, const char **why)
{
    apr_status_t rv;
    int res;

    if (bc->state != WSP_BC_READING
        && (res = wsp_bconn_request(bc, why)) != WSP_HS_OK) {
        return res;
    }
    for (;;) {
        wsp_hs_answer_t ans;

        rv = wsp_bconn_fill(bc);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            return WSP_HS_MORE;
        }
        if (APR_STATUS_IS_EOF(rv)) {
            *why = "connection closed during the handshake";
            return WSP_HS_FAIL;
        }
        if (rv != APR_SUCCESS) {
            *why = wsp_bconn_errtext(bc->pool, "reading the handshake",
                                     rv);
            return WSP_HS_FAIL;
        }
        res = wsp_handshake_response(bc->hpool, (const char *)bc->ibuf,
                                     bc->ilen, bc->accept, bc->offered,
                                     bc->require_protocol, &ans, why);
        if (res == WSP_HS_OK) {
            bc->protocol = ans.protocol ? apr_pstrdup(bc->pool, ans.protocol)
                                        : NULL;
            apr_pool_destroy(bc->hpool);
            bc->hpool = NULL;
            bc->req = NULL;
            bc->has_received = ans.has_received;
            bc->received = ans.received;
            bc->ipos = ans.head_len;
            bc->state = WSP_BC_OPEN;
            return WSP_HS_OK;
        }
        if (res == WSP_HS_FAIL) {
            return WSP_HS_FAIL;
        }
        if (bc->ilen >= WSP_HANDSHAKE_MAX) {
            *why = "handshake response too large";
            return WSP_HS_FAIL;
        }
    }
}

/* One read buffer per thread that runs pipes (a loop's thread, or a
 * worker with its pipe), freed when the thread ends. Only the pages a
 * read touched count. */
static pthread_key_t wsp_rbuf_key;
static pthread_once_t wsp_rbuf_once = PTHREAD_ONCE_INIT;

static void wsp_rbuf_key_make(void)
{
    pthread_key_create(&wsp_rbuf_key, free);
}

static unsigned char *wsp_rbuf(void)
{
    unsigned char *b;

    pthread_once(&wsp_rbuf_once, wsp_rbuf_key_make);
    if (!(b = pthread_getspecific(wsp_rbuf_key))) {
        if (!(b = malloc(WSP_IBUF_SIZE))) {
            abort();                  /* as APR's pools do */
        }
        pthread_setspecific(wsp_rbuf_key, b);
    }
    return b;
}

int wsp_bconn_peer_closed(wsp_bconn_t *bc, int or_reset)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    apr_os_sock_t fd;

    if (apr_os_sock_get(&fd, bc->sock) != APR_SUCCESS
        || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) {
        return 0;
    }
    return ti.tcpi_state == TCP_CLOSE_WAIT
           || (or_reset && ti.tcpi_state == TCP_CLOSE);
}

void wsp_bconn_settle(wsp_bconn_t *bc)
{
    if (!bc->ibuf || bc->ibuf == bc->own) {
        return;
    }
    if (bc->ipos == bc->ilen) {
        bc->ibuf = NULL;
        bc->ipos = bc->ilen = 0;
        return;
    }
    if (!bc->own) {
        bc->own = apr_palloc(bc->pool, WSP_IBUF_SIZE);
    }
    memcpy(bc->own, bc->ibuf + bc->ipos, bc->ilen - bc->ipos);
    bc->ilen -= bc->ipos;
    bc->ipos = 0;
    bc->ibuf = bc->own;
}

apr_status_t wsp_bconn_fill(wsp_bconn_t *bc)
{
    apr_size_t n;
    apr_status_t rv;

    if (!bc->ibuf) {
        bc->ibuf = wsp_rbuf();       /* settled: nothing unused in it */
        bc->ipos = bc->ilen = 0;
    }
    if (bc->ipos == bc->ilen) {
        bc->ipos = bc->ilen = 0;
    }
    else if (bc->ipos > 0 && bc->state == WSP_BC_OPEN) {
        memmove(bc->ibuf, bc->ibuf + bc->ipos, bc->ilen - bc->ipos);
        bc->ilen -= bc->ipos;
        bc->ipos = 0;
    }
    n = WSP_IBUF_SIZE - bc->ilen;
    if (n == 0) {
        return APR_SUCCESS;
    }
    if (bc->tls) {
        return wsp_tls_fill(bc);
    }
    rv = wsp_sock_recv(bc->sock, (char *)bc->ibuf + bc->ilen, &n);
    bc->ilen += n;
    if (n > 0) {
        return APR_SUCCESS;
    }
    return rv == APR_SUCCESS ? APR_EOF : rv;
}

apr_status_t wsp_bconn_send(wsp_bconn_t *bc, const char *buf, apr_size_t *n)
{
    if (bc->tls) {
        struct iovec vec;

        vec.iov_base = (void *)buf;
        vec.iov_len = *n;
        return wsp_tls_sendv(bc, &vec, 1, n);
    }
    return wsp_sock_send(bc->sock, buf, n);
}

apr_status_t wsp_bconn_sendv(wsp_bconn_t *bc, const struct iovec *vec,
                             int nvec, apr_size_t *n)
{
    if (bc->tls) {
        return wsp_tls_sendv(bc, vec, nvec, n);
    }
    return wsp_sock_sendv(bc->sock, vec, nvec, n);
}

int wsp_bconn_buffers_input(const wsp_bconn_t *bc)
{
    return bc->tls && wsp_tls_buffers_input(bc);
}

void wsp_bconn_close(wsp_bconn_t *bc)
{
    if (bc->addr && bc->state == WSP_BC_CONNECTING) {
        /* refused, timed out or given up: the name may point elsewhere */
        wsp_resolve_stale(bc->be->host);
    }
    if (bc->tls) {
        wsp_tls_close(bc);
    }
    if (bc->sock) {
        apr_socket_close(bc->sock);
        bc->sock = NULL;
    }
    apr_pool_destroy(bc->pool);
}
