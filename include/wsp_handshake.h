/* WebSocket opening handshake text on both hops. APR and APR-util only. */
#ifndef WSP_HANDSHAKE_H
#define WSP_HANDSHAKE_H

#include <apr_pools.h>
#include <apr_tables.h>

#define WSP_ACCEPT_LEN 28
#define WSP_HANDSHAKE_MAX 16384   /* largest backend response head */

/* Whether a Sec-WebSocket-Key is base64 of exactly 16 bytes. */
int wsp_key_valid(const char *key);

/* A fresh random Sec-WebSocket-Key (24 characters). */
const char *wsp_key_make(apr_pool_t *p);

/* Sec-WebSocket-Accept for key into out (WSP_ACCEPT_LEN + 1 bytes). */
void wsp_accept_make(const char *key, char *out);

/* The backend request, fully formatted ("GET ... \r\n\r\n"). */
typedef struct {
    const char *path;          /* path and query */
    const char *host;          /* Host header value */
    const char *key;           /* Sec-WebSocket-Key */
    const char *protocol;      /* Sec-WebSocket-Protocol or NULL */
    apr_table_t *headers;      /* further headers, in order; may be NULL */
} wsp_backend_req_t;

char *wsp_handshake_request(apr_pool_t *p, const wsp_backend_req_t *req);

/* Outcome of parsing a backend's answer. */
#define WSP_HS_MORE  1     /* the head is not complete yet */
#define WSP_HS_OK    0     /* 101 with a valid accept; *head_len set */
#define WSP_HS_FAIL -1     /* anything else; *why says what */

/* What a 101 told besides yes. */
typedef struct {
    apr_size_t head_len;       /* the head and its blank line: bytes after
                                * it are frames */
    const char *protocol;      /* the chosen subprotocol or NULL */
    int has_received;          /* X-WS-Persist-Received was given */
    apr_uint64_t received;     /* its value: client messages processed */
} wsp_hs_answer_t;

/* Parse the head of a backend response in buf (not NUL terminated).
 * expect_accept is the accept for the key we sent; offered is the
 * Sec-WebSocket-Protocol we sent (NULL if none): the answer must pick one
 * of its tokens or none, and none when offered is NULL; with
 * require_protocol set, answering none fails too (a replacement backend
 * must take the pinned subprotocol). Sec-WebSocket-Extensions in the answer
 * fails (we never offer any), so does an X-WS-Persist-Received that is not
 * one decimal number (DESIGN 7). On WSP_HS_OK *ans is filled in. */
int wsp_handshake_response(apr_pool_t *p, const char *buf, apr_size_t len,
                           const char *expect_accept, const char *offered,
                           int require_protocol, wsp_hs_answer_t *ans,
                           const char **why);

#endif /* WSP_HANDSHAKE_H */
