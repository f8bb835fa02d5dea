/* The TLS layer of a wss:// backend connection, through mod_ssl (see
 * wsp_tls.c). Internal to wsp_backend.c: each call is the TLS side of the
 * wsp_bconn_* call of the same name in wsp_backend.h, and all but
 * wsp_tls_handshake() are for a connection whose bc->tls is set. */
#ifndef WSP_TLS_H
#define WSP_TLS_H

#include "wsp_backend.h"

/* Move mod_ssl's client handshake on, never blocking; the first call
 * makes bc->tls (the conn_rec, mod_ssl's filters over ours). Returns
 * WSP_HS_MORE, WSP_HS_OK or WSP_HS_FAIL with *why. */
int wsp_tls_handshake(wsp_bconn_t *bc, const char **why);

/* Poll events the connection's handshake waits for. */
apr_int16_t wsp_tls_handshake_events(const wsp_bconn_t *bc);

/* Plaintext through mod_ssl, with the owed byte of wsp_bconn_sendv. */
apr_status_t wsp_tls_sendv(wsp_bconn_t *bc, const struct iovec *vec,
                           int nvec, apr_size_t *n);

/* Decrypted bytes into ibuf (already compacted) until it is full or
 * mod_ssl would block. */
apr_status_t wsp_tls_fill(wsp_bconn_t *bc);

/* 1 when the last wsp_tls_fill() stopped because ibuf was full. */
int wsp_tls_buffers_input(const wsp_bconn_t *bc);

/* A close_notify if the socket takes it now; a handshake still waiting
 * is unwound. The socket and the pool stay the caller's to close. */
void wsp_tls_close(wsp_bconn_t *bc);

#endif /* WSP_TLS_H */
