/* One connection to a backend: non-blocking connect, TLS through mod_ssl
 * for wss:// backends, the client-role handshake, and the socket and
 * buffers the pipe then uses. */
#ifndef WSP_BACKEND_H
#define WSP_BACKEND_H

#include <apr_network_io.h>
#include <apr_poll.h>

#include "httpd.h"

#include "wsp_pool.h"
#include "wsp_handshake.h"

#define WSP_IBUF_SIZE (64 * 1024)

typedef enum {
    WSP_BC_CONNECTING,
    WSP_BC_TLS,                    /* wss://: mod_ssl's handshake */
    WSP_BC_SENDING,
    WSP_BC_READING,
    WSP_BC_OPEN
} wsp_bc_state_e;

typedef struct wsp_tls_s wsp_tls_t;

typedef struct {
    apr_pool_t *pool;              /* the connection's own, gone on close */
    server_rec *s;
    wsp_backend_t *be;
    apr_socket_t *sock;
    apr_sockaddr_t *addr;
    wsp_bc_state_e state;
    apr_pool_t *hpool;             /* the handshake's, NULL once open */
    const char *req;               /* handshake request text */
    apr_size_t req_len;
    apr_size_t req_off;
    char accept[WSP_ACCEPT_LEN + 1];
    const char *offered;           /* Sec-WebSocket-Protocol we sent */
    int require_protocol;
    const char *protocol;          /* what the backend chose */
    int has_received;              /* its X-WS-Persist-Received, if any */
    apr_uint64_t received;
    unsigned char *ibuf;           /* bytes read, ibuf[ipos..ilen) unused:
                                    * NULL, this thread's buffer during a
                                    * run, or own */
    unsigned char *own;            /* made when a run left input unused */
    apr_size_t ipos;
    apr_size_t ilen;
    wsp_tls_t *tls;                /* wss:// once connected, else NULL */
} wsp_bconn_t;

/* Builds the handshake request for key in the connection's pool. */
typedef const char *wsp_request_fn(void *baton, apr_pool_t *p,
                                   const char *key);

/* Start connecting to be, with a fresh key and the request build makes
 * for it, never blocking. Fails at once when the resolver has no address
 * for be's host (WSP_RESOLVE_PENDING: not looked up yet; else the
 * lookup's error) or the connect is refused synchronously. A wss:// backend gets a conn_rec of its own
 * with mod_ssl's filters once the TCP connect is done; mod_ssl's proxy
 * configuration (SSLProxyEngine, SSLProxyVerify, ...) of s applies. */
apr_status_t wsp_bconn_open(wsp_bconn_t **out, apr_pool_t *parent,
                            server_rec *s, wsp_backend_t *be,
                            wsp_request_fn *build,
                            void *baton, const char *offered,
                            int require_protocol);

/* Move the handshake (TLS, then WebSocket) on as far as the socket
 * allows, never blocking. Returns WSP_HS_MORE, WSP_HS_OK (state is
 * WSP_BC_OPEN, bytes after the head stay in ibuf) or WSP_HS_FAIL with
 * *why. */
int wsp_bconn_handshake(wsp_bconn_t *bc, const char **why);

/* The first part of wsp_bconn_handshake: connect, TLS, and the request
 * sent. WSP_HS_OK once it is (state WSP_BC_READING): the health checker
 * reads answers that are not a 101 itself. */
int wsp_bconn_request(wsp_bconn_t *bc, const char **why);

/* Poll events the handshake waits for. */
apr_int16_t wsp_bconn_handshake_events(const wsp_bconn_t *bc);

/* Read more bytes into ibuf (compacting it first). APR_SUCCESS with data,
 * APR_EAGAIN, APR_EOF or an error. Over TLS it reads until ibuf is full
 * or the TLS layer would block. */
apr_status_t wsp_bconn_fill(wsp_bconn_t *bc);

/* At the end of a pipe's run: input left unused moves from the thread's
 * read buffer to the connection's own. An idle connection holds no read
 * buffer; the thread's is the next pipe's. */
void wsp_bconn_settle(wsp_bconn_t *bc);

/* The backend's FIN has arrived (TCP CLOSE_WAIT), read or not; with
 * or_reset, or its RST (CLOSED): reads then give what the kernel still
 * holds, then the end. */
int wsp_bconn_peer_closed(wsp_bconn_t *bc, int or_reset);

/* Write to an open connection: as much as the socket takes now, *n says
 * how much; APR_EAGAIN: poll for POLLOUT before writing again. Over TLS
 * *n may be > 0 with APR_EAGAIN: the bytes were encrypted but the socket
 * did not take all of the records. Then the last byte taken is not
 * counted in *n until the records are out, so the caller offers it again
 * (and the connection skips it): a caller that has nothing else to write
 * still comes back, and a backend lost meanwhile gets that message again
 * whole on the next one. */
apr_status_t wsp_bconn_send(wsp_bconn_t *bc, const char *buf, apr_size_t *n);
apr_status_t wsp_bconn_sendv(wsp_bconn_t *bc, const struct iovec *vec,
                             int nvec, apr_size_t *n);

/* Whether input may wait behind the socket's back, where poll does not
 * report it: over TLS, 1 when the last wsp_bconn_fill stopped because
 * ibuf was full (the TLS layer may hold decrypted bytes), 0 when it read
 * until the layer would block. Always 0 for ws://. */
int wsp_bconn_buffers_input(const wsp_bconn_t *bc);

/* "what: the error's text", for a failed handshake's why. */
const char *wsp_bconn_errtext(apr_pool_t *p, const char *what,
                              apr_status_t rv);

/* Close the socket and free everything of the connection (over TLS: a
 * close_notify if the socket takes it at once, no waiting). */
void wsp_bconn_close(wsp_bconn_t *bc);

#endif /* WSP_BACKEND_H */
