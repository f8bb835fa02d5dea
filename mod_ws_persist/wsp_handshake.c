/* WebSocket opening handshake text on both hops. APR and APR-util only. */
#include <apr_base64.h>
#include <apr_cstr.h>
#include <apr_general.h>
#include <apr_lib.h>
#include <apr_sha1.h>
#include <apr_strings.h>
#include <apr_time.h>

#include "wsp_handshake.h"
#include "wsp_parse.h"

#define WSP_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WSP_KEY_BYTES 16
#define WSP_KEY_LEN 24

static int wsp_is_base64(char c)
{
    return apr_isalnum(c) || c == '+' || c == '/';
}

int wsp_key_valid(const char *key)
{
    int i;

    if (!key || strlen(key) != WSP_KEY_LEN) {
        return 0;
    }
    /* 16 bytes are 22 base64 digits and "==". */
    for (i = 0; i < WSP_KEY_LEN - 2; i++) {
        if (!wsp_is_base64(key[i])) {
            return 0;
        }
    }
    return key[22] == '=' && key[23] == '=';
}

const char *wsp_key_make(apr_pool_t *p)
{
    unsigned char raw[WSP_KEY_BYTES];
    char *key = apr_palloc(p, apr_base64_encode_len(WSP_KEY_BYTES));

    if (apr_generate_random_bytes(raw, sizeof(raw)) != APR_SUCCESS) {
        /* The key is a nonce against confused caches, not a secret: time
         * and a counter still make it unique. */
        static apr_uint32_t counter;
        apr_time_t now = apr_time_now();
        apr_uint32_t n = ++counter;
        memset(raw, 0x5A, sizeof(raw));
        memcpy(raw, &now, sizeof(now));
        memcpy(raw + sizeof(now), &n, sizeof(n));
    }
    apr_base64_encode_binary(key, raw, sizeof(raw));
    return key;
}

void wsp_accept_make(const char *key, char *out)
{
    apr_sha1_ctx_t ctx;
    unsigned char digest[APR_SHA1_DIGESTSIZE];

    apr_sha1_init(&ctx);
    apr_sha1_update(&ctx, key, (unsigned int)strlen(key));
    apr_sha1_update(&ctx, WSP_GUID, sizeof(WSP_GUID) - 1);
    apr_sha1_final(digest, &ctx);
    apr_base64_encode_binary(out, digest, sizeof(digest));
}

/* RFC 7230 tchar: what a header name may be made of. */
static int wsp_is_tchar(unsigned char c)
{
    return apr_isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int wsp_name_ok(const char *name)
{
    if (!name || !*name) {
        return 0;
    }
    for (; *name; name++) {
        if (!wsp_is_tchar((unsigned char)*name)) {
            return 0;
        }
    }
    return 1;
}

/* A field value with no control character but HTAB: a CR or LF in a
 * forwarded value would start a header line of the client's choosing. */
static int wsp_value_ok(const char *value)
{
    if (!value) {
        return 0;
    }
    for (; *value; value++) {
        unsigned char c = (unsigned char)*value;
        if ((c < 0x20 && c != '\t') || c == 0x7F) {
            return 0;
        }
    }
    return 1;
}

/* The request target with spaces and control characters %-escaped, so it
 * stays one token of the request line. */
static const char *wsp_target(apr_pool_t *p, const char *path)
{
    static const char hex[] = "0123456789ABCDEF";
    const char *s;
    char *out, *o;
    apr_size_t bad = 0;

    if (!path || !*path) {
        return "/";
    }
    for (s = path; *s; s++) {
        bad += (unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7F;
    }
    if (!bad) {
        return path;
    }
    o = out = apr_palloc(p, strlen(path) + 2 * bad + 1);
    for (s = path; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c == 0x7F) {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
        else {
            *o++ = (char)c;
        }
    }
    *o = '\0';
    return out;
}

char *wsp_handshake_request(apr_pool_t *p, const wsp_backend_req_t *req)
{
    const apr_array_header_t *arr;
    const apr_table_entry_t *e;
    char *s;
    int i;

    s = apr_pstrcat(p, "GET ", wsp_target(p, req->path), " HTTP/1.1\r\n"
                    "Host: ", req->host, "\r\n"
                    "Upgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    "Sec-WebSocket-Key: ", req->key, "\r\n"
                    "Sec-WebSocket-Version: 13\r\n", NULL);
    if (req->protocol && *req->protocol && wsp_value_ok(req->protocol)) {
        s = apr_pstrcat(p, s, "Sec-WebSocket-Protocol: ", req->protocol,
                        "\r\n", NULL);
    }
    if (req->headers) {
        arr = apr_table_elts(req->headers);
        e = (const apr_table_entry_t *)arr->elts;
        for (i = 0; i < arr->nelts; i++) {
            /* httpd's parser refuses such values already (strict
             * HttpProtocolOptions); this holds without it too */
            if (!wsp_name_ok(e[i].key) || !wsp_value_ok(e[i].val)) {
                continue;
            }
            s = apr_pstrcat(p, s, e[i].key, ": ", e[i].val, "\r\n", NULL);
        }
    }
    return apr_pstrcat(p, s, "\r\n", NULL);
}

/* Whether list (comma separated) names token exactly: subprotocol names are
 * case-sensitive (RFC 7936), unlike the tokens wsp_header_has_token sees. */
static int wsp_list_has_exact(const char *list, const char *token)
{
    apr_size_t tlen = strlen(token);

    while (*list) {
        const char *end;
        apr_size_t n;

        while (*list == ' ' || *list == '\t') {
            list++;
        }
        end = strchr(list, ',');
        n = end ? (apr_size_t)(end - list) : strlen(list);
        while (n && (list[n - 1] == ' ' || list[n - 1] == '\t')) {
            n--;
        }
        if (n == tlen && !strncmp(list, token, n)) {
            return 1;
        }
        if (!end) {
            break;
        }
        list = end + 1;
    }
    return 0;
}

/* A printable copy of at most 80 bytes of s, for *why in the log. */
static const char *wsp_log_text(apr_pool_t *p, const char *s)
{
    char *t = apr_pstrndup(p, s, 80);
    char *c;

    for (c = t; *c; c++) {
        if (!apr_isprint(*c)) {
            *c = '?';
        }
    }
    return t;
}

/* The length of the head including its blank line, 0 when the blank line
 * has not come yet, -1 on a bare LF or a NUL. */
static apr_ssize_t wsp_head_end(const char *buf, apr_size_t len)
{
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] == '\0' || (buf[i] == '\n' && (!i || buf[i - 1] != '\r'))) {
            return -1;
        }
        if (buf[i] == '\n' && i >= 3 && buf[i - 2] == '\n') {
            return (apr_ssize_t)i + 1;
        }
    }
    return 0;
}

typedef struct {
    int upgrade;               /* Upgrade lists websocket */
    int connection;            /* Connection lists upgrade */
    int extensions;            /* Sec-WebSocket-Extensions seen */
    int accepts, protocols;    /* how often each was seen */
    int receiveds;
    const char *accept;
    const char *protocol;
    const char *received;
} wsp_hs_fields_t;

/* Note one header line; returns NULL or what is wrong with it. */
static const char *wsp_hs_field(wsp_hs_fields_t *f, char *line)
{
    char *colon = strchr(line, ':');
    char *val, *end;

    if (*line == ' ' || *line == '\t') {
        return "folded header line";
    }
    if (!colon || colon == line || colon[-1] == ' ' || colon[-1] == '\t') {
        return "malformed header line";
    }
    *colon = '\0';
    for (val = colon + 1; *val == ' ' || *val == '\t'; val++) {
    }
    for (end = val + strlen(val); end > val
         && (end[-1] == ' ' || end[-1] == '\t'); end--) {
    }
    *end = '\0';

    if (!apr_cstr_casecmp(line, "Upgrade")) {
        f->upgrade |= wsp_header_has_token(val, "websocket");
    }
    else if (!apr_cstr_casecmp(line, "Connection")) {
        f->connection |= wsp_header_has_token(val, "upgrade");
    }
    else if (!apr_cstr_casecmp(line, "Sec-WebSocket-Accept")) {
        f->accepts++;
        f->accept = val;
    }
    else if (!apr_cstr_casecmp(line, "Sec-WebSocket-Extensions")) {
        f->extensions = 1;
    }
    else if (!apr_cstr_casecmp(line, "Sec-WebSocket-Protocol")) {
        f->protocols++;
        f->protocol = *val ? val : NULL;
    }
    else if (!apr_cstr_casecmp(line, "X-WS-Persist-Received")) {
        f->receiveds++;
        f->received = val;
    }
    return NULL;
}

/* The status line: NULL when it says "HTTP/1.1 101", else why not. */
static const char *wsp_hs_status(apr_pool_t *p, const char *line)
{
    if (strncmp(line, "HTTP/1.1 ", 9) || !apr_isdigit(line[9])
        || !apr_isdigit(line[10]) || !apr_isdigit(line[11])
        || (line[12] && line[12] != ' ')) {
        return apr_pstrcat(p, "bad status line \"", wsp_log_text(p, line),
                           "\"", NULL);
    }
    if (strncmp(line + 9, "101", 3)) {
        return apr_pstrcat(p, "status ", wsp_log_text(p, line + 9),
                           " instead of 101", NULL);
    }
    return NULL;
}

/* The subprotocol rules; NULL or why the answer breaks them. */
static const char *wsp_hs_protocol(apr_pool_t *p, const wsp_hs_fields_t *f,
                                   const char *offered, int require_protocol)
{
    if (f->protocols > 1) {
        return "more than one Sec-WebSocket-Protocol";
    }
    if (!f->protocol) {
        if (require_protocol && offered) {
            return apr_pstrcat(p, "no subprotocol chosen, \"",
                               wsp_log_text(p, offered), "\" required",
                               NULL);
        }
        return NULL;
    }
    if (!offered) {
        return apr_pstrcat(p, "subprotocol \"", wsp_log_text(p, f->protocol),
                           "\" chosen but none offered", NULL);
    }
    if (!wsp_list_has_exact(offered, f->protocol)) {
        return apr_pstrcat(p, "subprotocol \"", wsp_log_text(p, f->protocol),
                           "\" was not offered", NULL);
    }
    return NULL;
}

int wsp_handshake_response(apr_pool_t *p, const char *buf, apr_size_t len,
                           const char *expect_accept, const char *offered,
                           int require_protocol, wsp_hs_answer_t *ans,
                           const char **why)
{
    wsp_hs_fields_t f;
    apr_ssize_t end;
    char *head, *line, *next;
    const char *err;

    end = wsp_head_end(buf, len < WSP_HANDSHAKE_MAX ? len
                                                    : WSP_HANDSHAKE_MAX);
    if (end < 0) {
        *why = "bare LF or NUL in the response head";
        return WSP_HS_FAIL;
    }
    if (end == 0) {
        if (len < WSP_HANDSHAKE_MAX) {
            return WSP_HS_MORE;
        }
        *why = "response head too large";
        return WSP_HS_FAIL;
    }

    /* A NUL terminated copy, cut into lines in place. */
    head = apr_pstrmemdup(p, buf, (apr_size_t)end);
    memset(&f, 0, sizeof(f));
    line = head;
    next = strstr(line, "\r\n");
    *next = '\0';
    if ((err = wsp_hs_status(p, line)) != NULL) {
        *why = err;
        return WSP_HS_FAIL;
    }
    for (line = next + 2; strncmp(line, "\r\n", 2); line = next + 2) {
        next = strstr(line, "\r\n");
        *next = '\0';
        if ((err = wsp_hs_field(&f, line)) != NULL) {
            *why = apr_pstrcat(p, err, " \"", wsp_log_text(p, line), "\"",
                               NULL);
            return WSP_HS_FAIL;
        }
    }

    if (!f.upgrade) {
        err = "no Upgrade: websocket";
    }
    else if (!f.connection) {
        err = "no Connection: upgrade";
    }
    else if (f.accepts != 1) {
        err = f.accepts ? "more than one Sec-WebSocket-Accept"
                        : "no Sec-WebSocket-Accept";
    }
    else if (strcmp(f.accept, expect_accept)) {
        err = apr_pstrcat(p, "wrong Sec-WebSocket-Accept \"",
                          wsp_log_text(p, f.accept), "\"", NULL);
    }
    else if (f.extensions) {
        err = "Sec-WebSocket-Extensions in the answer, none offered";
    }
    else if (f.receiveds > 1) {
        err = "more than one X-WS-Persist-Received";
    }
    else if (f.receiveds && !wsp_parse_count(f.received, strlen(f.received),
                                             &ans->received)) {
        err = apr_pstrcat(p, "X-WS-Persist-Received \"",
                          wsp_log_text(p, f.received),
                          "\" is not a message count", NULL);
    }
    else {
        err = wsp_hs_protocol(p, &f, offered, require_protocol);
    }
    if (err) {
        *why = err;
        return WSP_HS_FAIL;
    }
    ans->head_len = (apr_size_t)end;
    ans->protocol = f.protocol;
    ans->has_received = f.receiveds;
    if (!f.receiveds) {
        ans->received = 0;
    }
    return WSP_HS_OK;
}
