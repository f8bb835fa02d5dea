/* Opening handshake: keys, accept, backend request, backend response. */
#include <apr_strings.h>
#include <apr_tables.h>

#include "wsp_test.h"
#include "wsp_handshake.h"

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static void test_accept_rfc_example(apr_pool_t *p)
{
    char out[WSP_ACCEPT_LEN + 1];

    (void)p;
    memset(out, 'x', sizeof(out));
    wsp_accept_make(RFC_KEY, out);
    CHECK_STR(out, RFC_ACCEPT);
}

static void test_key_valid(apr_pool_t *p)
{
    static const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",           /* 23 characters */
        "dGhlIHNhbXBsZSBub25jZQ===",         /* 25 characters */
        "dGhlIHNhbXBsZSBub25jZQ=A",          /* padding broken */
        "dGhlIHNhbXBsZSBub25jZQA=",          /* 17 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAAA",          /* 18 bytes */
        "dGhlIHNhbXBs*SBub25jZQ==",          /* not base64 */
        "dGhlIHNhbX=sZSBub25jZQ==",          /* padding inside */
        "dGhlIHNhbXBsZSBub25j",              /* 15 bytes */
        " dGhlIHNhbXBsZSBub25jZQ==",
    };
    apr_size_t i;

    (void)p;
    CHECK(wsp_key_valid(RFC_KEY));
    CHECK(wsp_key_valid("+/+/+/+/+/+/+/+/+/+/+w=="));
    CHECK(!wsp_key_valid(NULL));
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(!wsp_key_valid(bad[i]));
        if (wsp_key_valid(bad[i])) {
            fprintf(stderr, "  accepted key \"%s\"\n", bad[i]);
        }
    }
}

static void test_key_make(apr_pool_t *p)
{
    const char *a = wsp_key_make(p), *b = wsp_key_make(p);

    CHECK_INT(strlen(a), 24);
    CHECK(wsp_key_valid(a));
    CHECK(wsp_key_valid(b));
    CHECK(strcmp(a, b) != 0);
}

static void test_request_text(apr_pool_t *p)
{
    wsp_backend_req_t req;
    apr_table_t *h = apr_table_make(p, 4);

    apr_table_add(h, "Origin", "https://app.example");
    apr_table_add(h, "X-WS-Persist-Client-Id",
                  "098d8a97-3615-4eb8-b803-c57c01c7536c");
    apr_table_add(h, "X-WS-Persist-Resume", "2");
    req.path = "/chat/room?x=1";
    req.host = "10.0.0.11:9000";
    req.key = RFC_KEY;
    req.protocol = "chat, superchat";
    req.headers = h;
    CHECK_STR(wsp_handshake_request(p, &req),
              "GET /chat/room?x=1 HTTP/1.1\r\n"
              "Host: 10.0.0.11:9000\r\n"
              "Upgrade: websocket\r\n"
              "Connection: Upgrade\r\n"
              "Sec-WebSocket-Key: " RFC_KEY "\r\n"
              "Sec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Protocol: chat, superchat\r\n"
              "Origin: https://app.example\r\n"
              "X-WS-Persist-Client-Id: "
              "098d8a97-3615-4eb8-b803-c57c01c7536c\r\n"
              "X-WS-Persist-Resume: 2\r\n"
              "\r\n");
}

static void test_request_minimal(apr_pool_t *p)
{
    wsp_backend_req_t req;

    req.path = "/";
    req.host = "b";
    req.key = RFC_KEY;
    req.protocol = NULL;
    req.headers = NULL;
    CHECK_STR(wsp_handshake_request(p, &req),
              "GET / HTTP/1.1\r\n"
              "Host: b\r\n"
              "Upgrade: websocket\r\n"
              "Connection: Upgrade\r\n"
              "Sec-WebSocket-Key: " RFC_KEY "\r\n"
              "Sec-WebSocket-Version: 13\r\n"
              "\r\n");
}

/* Found by fuzz_client_handshake: a forwarded value with CR LF wrote a
 * header line of the client's choosing into the backend request. Values
 * with control characters and names that are not tokens are left out;
 * the path stays one token of the request line. */
static void test_request_injection(apr_pool_t *p)
{
    wsp_backend_req_t req;
    apr_table_t *h = apr_table_make(p, 4);

    apr_table_add(h, "Origin", "a\r\nX-Evil: 1");
    apr_table_add(h, "User-Agent", "tab\tok");
    apr_table_add(h, "Cookie", "nul\x7f");
    apr_table_add(h, "Bad Name", "v");
    apr_table_add(h, "", "v");
    apr_table_add(h, "Evil:\r\nX", "v");
    apr_table_add(h, "X-WS-Persist-Resume", "1");
    req.path = "/a b\r\nX: y";
    req.host = "b";
    req.key = RFC_KEY;
    req.protocol = "chat\r\nX-Evil: 2";
    req.headers = h;
    CHECK_STR(wsp_handshake_request(p, &req),
              "GET /a%20b%0D%0AX:%20y HTTP/1.1\r\n"
              "Host: b\r\n"
              "Upgrade: websocket\r\n"
              "Connection: Upgrade\r\n"
              "Sec-WebSocket-Key: " RFC_KEY "\r\n"
              "Sec-WebSocket-Version: 13\r\n"
              "User-Agent: tab\tok\r\n"
              "X-WS-Persist-Resume: 1\r\n"
              "\r\n");
    /* an empty protocol is no protocol */
    req.path = "";
    req.protocol = "";
    req.headers = NULL;
    CHECK_STR(wsp_handshake_request(p, &req),
              "GET / HTTP/1.1\r\n"
              "Host: b\r\n"
              "Upgrade: websocket\r\n"
              "Connection: Upgrade\r\n"
              "Sec-WebSocket-Key: " RFC_KEY "\r\n"
              "Sec-WebSocket-Version: 13\r\n"
              "\r\n");
}

#define HEAD_101 "HTTP/1.1 101 Switching Protocols\r\n"
#define GOOD_HEADERS "Upgrade: websocket\r\n" \
                     "Connection: Upgrade\r\n" \
                     "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
#define GOOD HEAD_101 GOOD_HEADERS "\r\n"

typedef struct {
    int rv;
    apr_size_t head_len;
    const char *protocol;
    const char *why;
    wsp_hs_answer_t ans;
} hs_result_t;

static hs_result_t parse(apr_pool_t *p, const char *buf, apr_size_t len,
                         const char *offered, int require)
{
    hs_result_t r;

    r.head_len = 0;
    r.protocol = "unset";
    r.why = NULL;
    r.rv = wsp_handshake_response(p, buf, len, RFC_ACCEPT, offered, require,
                                  &r.ans, &r.why);
    if (r.rv == WSP_HS_OK) {
        r.head_len = r.ans.head_len;
        r.protocol = r.ans.protocol;
    }
    return r;
}

static hs_result_t parse_str(apr_pool_t *p, const char *buf,
                             const char *offered, int require)
{
    return parse(p, buf, strlen(buf), offered, require);
}

static void test_response_ok(apr_pool_t *p)
{
    hs_result_t r = parse_str(p, GOOD, NULL, 0);

    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_INT(r.head_len, strlen(GOOD));
    CHECK(r.protocol == NULL);
}

static void test_response_case_and_lists(apr_pool_t *p)
{
    hs_result_t r = parse_str(p, "HTTP/1.1 101 OK\r\n"
                              "upgrade:WebSocket\r\n"
                              "CONNECTION: keep-alive, UPGRADE\r\n"
                              "sec-websocket-accept:   " RFC_ACCEPT "  \r\n"
                              "Server: test\r\n"
                              "\r\n", NULL, 0);

    CHECK_INT(r.rv, WSP_HS_OK);
}

static void test_response_incomplete(apr_pool_t *p)
{
    apr_size_t len, full = strlen(GOOD);
    int bad = 0;

    /* Every proper prefix, the empty one included, asks for more. */
    for (len = 0; len < full; len++) {
        bad += parse(p, GOOD, len, NULL, 0).rv != WSP_HS_MORE;
    }
    CHECK_INT(bad, 0);
    CHECK_INT(parse(p, GOOD, full, NULL, 0).rv, WSP_HS_OK);
}

static void test_response_too_large(apr_pool_t *p)
{
    char *buf = apr_palloc(p, WSP_HANDSHAKE_MAX + 64);
    apr_size_t n = strlen(HEAD_101);
    hs_result_t r;

    memcpy(buf, HEAD_101, n);
    memset(buf + n, 'a', WSP_HANDSHAKE_MAX + 64 - n);
    CHECK_INT(parse(p, buf, WSP_HANDSHAKE_MAX - 1, NULL, 0).rv, WSP_HS_MORE);
    r = parse(p, buf, WSP_HANDSHAKE_MAX, NULL, 0);
    CHECK_INT(r.rv, WSP_HS_FAIL);
    CHECK(r.why != NULL);
    /* A blank line just past the limit is still too late. */
    memcpy(buf + WSP_HANDSHAKE_MAX - 2, "\r\n\r\n", 4);
    CHECK_INT(parse(p, buf, WSP_HANDSHAKE_MAX + 2, NULL, 0).rv, WSP_HS_FAIL);
}

static void test_response_status(apr_pool_t *p)
{
    static const char *bad[] = {
        "HTTP/1.1 404 Not Found\r\n",
        "HTTP/1.1 200 OK\r\n",
        "HTTP/1.0 101 Switching Protocols\r\n",
        "HTTP/1.1 1010 Switching Protocols\r\n",
        "HTTP/1.1 10 Switching Protocols\r\n",
        "ICY 101 Switching Protocols\r\n",
    };
    hs_result_t r;
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = parse_str(p, apr_pstrcat(p, bad[i], GOOD_HEADERS, "\r\n", NULL),
                      NULL, 0);
        CHECK_INT(r.rv, WSP_HS_FAIL);
        CHECK(r.why != NULL);
    }
    r = parse_str(p, "HTTP/1.1 503 Service Unavailable\r\n\r\n", NULL, 0);
    CHECK(r.why && strstr(r.why, "503 Service Unavailable"));
    CHECK_INT(parse_str(p, "HTTP/1.1 101\r\n" GOOD_HEADERS "\r\n",
                        NULL, 0).rv, WSP_HS_OK);
}

static void test_response_accept(apr_pool_t *p)
{
    hs_result_t r;

    r = parse_str(p, HEAD_101 "Upgrade: websocket\r\n"
                  "Connection: Upgrade\r\n\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_FAIL);
    CHECK(r.why && strstr(r.why, "Accept"));

    r = parse_str(p, HEAD_101 "Upgrade: websocket\r\n"
                  "Connection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOO=\r\n"
                  "\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_FAIL);
    CHECK(r.why && strstr(r.why, "Accept"));

    r = parse_str(p, HEAD_101 GOOD_HEADERS
                  "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_FAIL);
}

static void test_response_upgrade_connection(apr_pool_t *p)
{
    CHECK_INT(parse_str(p, HEAD_101 "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 "Upgrade: h2c\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 "Upgrade: websocket\r\n"
                        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 "Upgrade: websocket\r\n"
                        "Connection: keep-alive\r\n"
                        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
}

static void test_response_extensions(apr_pool_t *p)
{
    hs_result_t r = parse_str(p, HEAD_101 GOOD_HEADERS
                              "Sec-WebSocket-Extensions: permessage-deflate"
                              "\r\n\r\n", NULL, 0);

    CHECK_INT(r.rv, WSP_HS_FAIL);
    CHECK(r.why && strstr(r.why, "Extensions"));
}

static void test_response_protocol_pick(apr_pool_t *p)
{
    const char *resp = HEAD_101 GOOD_HEADERS
                       "Sec-WebSocket-Protocol: superchat\r\n\r\n";
    hs_result_t r;

    r = parse_str(p, resp, "chat, superchat", 0);
    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_STR(r.protocol, "superchat");

    /* Not offered, offered in another case, or nothing offered at all. */
    CHECK_INT(parse_str(p, resp, "chat", 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, resp, "chat, SuperChat", 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, resp, "chat, superchatx", 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, resp, NULL, 0).rv, WSP_HS_FAIL);
}

static void test_response_protocol_list_answer(apr_pool_t *p)
{
    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS
                        "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n",
                        "chat, superchat", 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS
                        "Sec-WebSocket-Protocol: chat\r\n"
                        "Sec-WebSocket-Protocol: chat\r\n\r\n",
                        "chat", 0).rv, WSP_HS_FAIL);
}

static void test_response_protocol_none(apr_pool_t *p)
{
    hs_result_t r = parse_str(p, GOOD, "chat, superchat", 0);

    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK(r.protocol == NULL);
}

static void test_response_protocol_pinned(apr_pool_t *p)
{
    hs_result_t r;

    r = parse_str(p, GOOD, "chat", 1);
    CHECK_INT(r.rv, WSP_HS_FAIL);
    CHECK(r.why && strstr(r.why, "chat"));

    r = parse_str(p, HEAD_101 GOOD_HEADERS
                  "Sec-WebSocket-Protocol: chat\r\n\r\n", "chat", 1);
    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_STR(r.protocol, "chat");

    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS
                        "Sec-WebSocket-Protocol: other\r\n\r\n",
                        "chat", 1).rv, WSP_HS_FAIL);
}

static void test_response_frames_follow(apr_pool_t *p)
{
    static const char buf[] = GOOD "\x81\x02hi" "\x88\x00";
    hs_result_t r = parse(p, buf, sizeof(buf) - 1, NULL, 0);

    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_INT(r.head_len, strlen(GOOD));
}

static void test_response_malformed(apr_pool_t *p)
{
    CHECK_INT(parse_str(p, "HTTP/1.1 101 OK\n" GOOD_HEADERS "\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, "HTTP/1.1 101 OK\n\n", NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS "X-Broken\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS "X-Folded: a\r\n b\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse_str(p, HEAD_101 GOOD_HEADERS "Upgrade : x\r\n\r\n",
                        NULL, 0).rv, WSP_HS_FAIL);
    CHECK_INT(parse(p, HEAD_101 "X: a\0b\r\n" GOOD_HEADERS "\r\n",
                    sizeof(HEAD_101 "X: a\0b\r\n" GOOD_HEADERS "\r\n") - 1,
                    NULL, 0).rv, WSP_HS_FAIL);
}

/* X-WS-Persist-Received (DESIGN 7): one decimal count, or the answer
 * fails; absent, none is reported. */
static void test_response_received(apr_pool_t *p)
{
    static const char *bad[] = { "", "-1", "1.5", "12a", " 7 7",
                                 "99999999999999999999", "0x10" };
    hs_result_t r = parse_str(p, GOOD, NULL, 0);
    apr_size_t i;

    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_INT(r.ans.has_received, 0);
    r = parse_str(p, HEAD_101 GOOD_HEADERS "x-ws-persist-received:  42 \r\n"
                  "\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_INT(r.ans.has_received, 1);
    CHECK_INT(r.ans.received, 42);
    r = parse_str(p, HEAD_101 GOOD_HEADERS "X-WS-Persist-Received: 0\r\n"
                  "\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_OK);
    CHECK_INT(r.ans.has_received, 1);
    CHECK_INT(r.ans.received, 0);
    r = parse_str(p, HEAD_101 GOOD_HEADERS "X-WS-Persist-Received: 1\r\n"
                  "X-WS-Persist-Received: 2\r\n\r\n", NULL, 0);
    CHECK_INT(r.rv, WSP_HS_FAIL);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = parse_str(p, apr_pstrcat(p, HEAD_101 GOOD_HEADERS,
                                     "X-WS-Persist-Received: ", bad[i],
                                     "\r\n\r\n", NULL), NULL, 0);
        CHECK_INT(r.rv, WSP_HS_FAIL);
        CHECK(r.why && strstr(r.why, "X-WS-Persist-Received"));
    }
}

WSP_TEST_MAIN(
    RUN(test_accept_rfc_example);
    RUN(test_key_valid);
    RUN(test_key_make);
    RUN(test_request_text);
    RUN(test_request_minimal);
    RUN(test_request_injection);
    RUN(test_response_ok);
    RUN(test_response_case_and_lists);
    RUN(test_response_incomplete);
    RUN(test_response_too_large);
    RUN(test_response_status);
    RUN(test_response_accept);
    RUN(test_response_upgrade_connection);
    RUN(test_response_extensions);
    RUN(test_response_protocol_pick);
    RUN(test_response_protocol_list_answer);
    RUN(test_response_protocol_none);
    RUN(test_response_protocol_pinned);
    RUN(test_response_frames_follow);
    RUN(test_response_malformed);
    RUN(test_response_received);
)
