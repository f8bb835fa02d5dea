/* libFuzzer target: the parser of a backend's answer to our handshake
 * (wsp_handshake_response in wsp_handshake.c), fed the way
 * wsp_bconn_handshake feeds it: the same buffer again each time more
 * bytes arrived.
 *
 * The first input byte picks what we offered as Sec-WebSocket-Protocol,
 * whether a subprotocol is required, and the read size; the rest is the
 * backend's bytes. We sent the RFC's example key, so a valid answer
 * carries its accept. Checked: a head is accepted only with its blank
 * line inside the bytes, only a subprotocol we offered is taken, and the
 * reason of a refusal (it goes to the error log) is printable text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_lib.h>
#include <apr_pools.h>

#include "wsp_handshake.h"

#define FUZZ_CHECK(c) do { if (!(c)) { abort(); } } while (0)
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static apr_pool_t *root;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    apr_initialize();
    apr_pool_create(&root, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *offers[] = { NULL, "chat", "chat, superchat",
                                    "a,b,,c" };
    const char *offered, *proto = NULL, *why = NULL, *c;
    apr_size_t head_len = 0, have, step;
    wsp_hs_answer_t ans;
    apr_pool_t *p;
    int require, res = WSP_HS_MORE;

    if (size < 1) {
        return 0;
    }
    offered = offers[data[0] & 3];
    require = (data[0] >> 2) & 1;
    step = 1 + (data[0] >> 3) * 37;
    data++;
    size--;

    apr_pool_create(&p, root);
    for (have = 0; have < size && res == WSP_HS_MORE;) {
        have = size - have < step ? size : have + step;
        res = wsp_handshake_response(p, (const char *)data, have, RFC_ACCEPT,
                                     offered, require, &ans, &why);
    }
    if (res == WSP_HS_OK) {
        head_len = ans.head_len;
        proto = ans.protocol;
    }
    if (res == WSP_HS_OK) {
        FUZZ_CHECK(head_len >= 4 && head_len <= have);
        FUZZ_CHECK(head_len <= WSP_HANDSHAKE_MAX);
        FUZZ_CHECK(!memcmp(data + head_len - 4, "\r\n\r\n", 4));
        FUZZ_CHECK(!memcmp(data, "HTTP/1.1 101", 12));
        if (proto) {
            FUZZ_CHECK(offered != NULL);
            FUZZ_CHECK(strstr(offered, proto) != NULL);
        }
        else {
            FUZZ_CHECK(!(require && offered));
        }
    }
    else if (res == WSP_HS_FAIL) {
        FUZZ_CHECK(why != NULL);
        for (c = why; *c; c++) {
            FUZZ_CHECK(apr_isprint(*c));
        }
    }
    else {
        FUZZ_CHECK(res == WSP_HS_MORE && have < WSP_HANDSHAKE_MAX);
    }
    apr_pool_destroy(p);
    return 0;
}
