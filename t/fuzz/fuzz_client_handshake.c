/* libFuzzer target: the checks a client's upgrade request goes through
 * before anything of it is used (wsp_handshake.c, wsp_parse.c): the
 * Sec-WebSocket-Key, the Upgrade and Connection tokens, the client id
 * (it ends up in the backend's request headers and in every log line, so
 * nothing but a canonical UUID may pass), the backend request built from
 * forwarded header values, and the size and time values of the
 * directives.
 *
 * The input is NUL separated fields: key, Upgrade, Connection, client id,
 * a forwarded header value, a size, a time, a WSPersistAllowedOrigin value
 * and a client's Origin. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <apr_base64.h>
#include <apr_cstr.h>
#include <apr_general.h>
#include <apr_lib.h>
#include <apr_pools.h>
#include <apr_tables.h>

#include "wsp_handshake.h"
#include "wsp_parse.h"

#define FUZZ_CHECK(c) do { if (!(c)) { abort(); } } while (0)
#define NFIELDS 9

static apr_pool_t *root;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    apr_initialize();
    apr_pool_create(&root, NULL);
    return 0;
}

static void check_key(const char *key)
{
    char accept[WSP_ACCEPT_LEN + 1];
    unsigned char raw[64];

    if (!wsp_key_valid(key)) {
        return;
    }
    FUZZ_CHECK(strlen(key) == 24);
    FUZZ_CHECK(apr_base64_decode_len(key) <= (int)sizeof(raw));
    FUZZ_CHECK(apr_base64_decode_binary(raw, key) == 16);
    wsp_accept_make(key, accept);
    FUZZ_CHECK(strlen(accept) == WSP_ACCEPT_LEN);
}

static void check_token(const char *value, const char *token)
{
    int has = wsp_header_has_token(value, token);
    /* a value that is exactly the token, any case, always lists it (a
     * token never holds list separators or blanks) */
    if (!apr_cstr_casecmp(value, token) && *token
        && !strpbrk(token, ", \t")) {
        FUZZ_CHECK(has);
    }
    if (!*token) {
        FUZZ_CHECK(!has);
    }
}

static void check_id(const char *id)
{
    const char *c;

    if (!wsp_uuid_valid(id)) {
        return;
    }
    FUZZ_CHECK(strlen(id) == 36);
    for (c = id; *c; c++) {
        FUZZ_CHECK(apr_isxdigit(*c) || *c == '-');
    }
}

/* The request text: one header per line, whatever the values held. */
static void check_request(apr_pool_t *p, const char *id, const char *value)
{
    wsp_backend_req_t req;
    apr_table_t *h = apr_table_make(p, 4);
    const char *s, *end;
    int lines = 0;

    apr_table_setn(h, "Origin", value);
    apr_table_setn(h, "X-WS-Persist-Client-Id", id);
    apr_table_setn(h, value, "name-from-input");
    req.path = "/echo/";
    req.host = "127.0.0.1:9000";
    req.key = "dGhlIHNhbXBsZSBub25jZQ==";
    req.protocol = value;
    req.headers = h;
    s = wsp_handshake_request(p, &req);
    FUZZ_CHECK(s != NULL);
    end = s + strlen(s);
    FUZZ_CHECK(end - s >= 4 && !strcmp(end - 4, "\r\n\r\n"));
    for (; *s; s++) {
        FUZZ_CHECK(*s != '\n' || s[-1] == '\r');
        FUZZ_CHECK(*s != '\r' || s[1] == '\n');
        if (*s == '\n') {
            lines++;
        }
        FUZZ_CHECK(*s == '\r' || *s == '\n' || *s == '\t'
                   || !apr_iscntrl(*s));
    }
    /* request line, Host, Upgrade, Connection, key, version, at most a
     * protocol and the three headers, and the blank line */
    FUZZ_CHECK(lines >= 7 && lines <= 11);
}

/* An accepted WSPersistAllowedOrigin value is one token of printable
 * characters without a path; a list of it lets that Origin in. */
static void check_origin(apr_pool_t *p, const char *value,
                         const char *origin)
{
    apr_array_header_t *list = apr_array_make(p, 1, sizeof(const char *));
    const char *c;

    if (wsp_origin_check(value) != NULL) {
        return;
    }
    for (c = value; *c; c++) {
        FUZZ_CHECK(apr_isgraph(*c));
    }
    FUZZ_CHECK(!strcmp(value, "*") || !strchr(strstr(value, "//")
                                              ? strstr(value, "//") + 2
                                              : value, '/'));
    APR_ARRAY_PUSH(list, const char *) = value;
    FUZZ_CHECK(wsp_origin_allowed(list, value));
    FUZZ_CHECK(wsp_origin_allowed(list, NULL));
    if (strcmp(value, "*") && apr_cstr_casecmp(value, origin)) {
        FUZZ_CHECK(!wsp_origin_allowed(list, origin));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *f[NFIELDS];
    apr_pool_t *p;
    char *copy;
    apr_size_t i, n = 0;
    apr_off_t bytes;
    apr_interval_time_t t;

    apr_pool_create(&p, root);
    copy = apr_pcalloc(p, size + 1);
    memcpy(copy, data, size);
    f[n++] = copy;
    for (i = 0; i < size && n < NFIELDS; i++) {
        if (!copy[i]) {
            f[n++] = copy + i + 1;
        }
    }
    while (n < NFIELDS) {
        f[n++] = "";
    }

    check_key(f[0]);
    check_token(f[1], "websocket");
    check_token(f[2], "upgrade");
    check_token(f[2], f[1]);
    check_id(f[3]);
    check_request(p, f[3], f[4]);
    if (!wsp_parse_size(f[5], &bytes)) {
        FUZZ_CHECK(bytes >= 0);
    }
    if (!wsp_parse_time(f[6], &t)) {
        FUZZ_CHECK(t >= 0);
    }
    check_origin(p, f[7], f[8]);
    apr_pool_destroy(p);
    return 0;
}
