/* libFuzzer target: the RFC 6455 frame reader (wsp_frame.c).
 *
 * The input is a byte stream as one hop would deliver it. Its first byte
 * picks the direction (client frames are masked, server frames are not),
 * the message limit and how the stream is cut into reads; the rest is fed
 * to a reader as the pipe feeds it: headers, then payload into a buffer,
 * unmasked and re-masked in one pass. What the reader promises is checked
 * on the way: a header it accepts is one the encoder writes back the same,
 * control frames are final and short, a message never passes the limit,
 * and a close payload it accepts can be rebuilt. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wsp_frame.h"

#define FUZZ_CHECK(c) do { if (!(c)) { abort(); } } while (0)

static const unsigned char out_key[4] = { 0x12, 0x34, 0x56, 0x78 };

/* Re-encode the accepted header: same bytes the peer sent, except that
 * a non-minimal length encoding is legal on the wire but not ours. */
static void check_header(const wsp_reader_t *rd)
{
    unsigned char h[WSP_FRAME_HDR_MAX];
    const wsp_frame_hdr_t *hdr = &rd->hdr;
    apr_size_t n = wsp_frame_header(h, hdr->fin, hdr->opcode, hdr->len,
                                    hdr->masked ? hdr->key : NULL);

    FUZZ_CHECK(n >= 2 && n <= WSP_FRAME_HDR_MAX);
    FUZZ_CHECK(((h[0] & 0x80) != 0) == (hdr->fin != 0));
    FUZZ_CHECK((h[0] & 0x0F) == hdr->opcode);
    FUZZ_CHECK(hdr->rsv == 0);
    FUZZ_CHECK(hdr->masked == (rd->from == WSP_FROM_CLIENT));
    if (WSP_OP_IS_CONTROL(hdr->opcode)) {
        FUZZ_CHECK(hdr->fin && hdr->len <= WSP_CONTROL_MAX);
    }
    else if (rd->max_message) {
        FUZZ_CHECK(hdr->len <= rd->max_message);
        FUZZ_CHECK(rd->msg_len <= rd->max_message);
    }
}

static void check_close(const unsigned char *pl, apr_size_t len)
{
    unsigned char again[WSP_CONTROL_MAX];
    const char *reason;
    apr_size_t rlen, n;
    int code, code2;

    if (wsp_close_parse(pl, len, &code, &reason, &rlen) != 0) {
        return;
    }
    FUZZ_CHECK(code == WSP_CLOSE_NO_STATUS || wsp_close_code_valid(code));
    FUZZ_CHECK(rlen <= WSP_CONTROL_MAX - 2);
    n = wsp_close_payload(again, code, reason, rlen);
    FUZZ_CHECK(n <= WSP_CONTROL_MAX);
    FUZZ_CHECK(wsp_close_parse(again, n, &code2, &reason, &rlen) == 0);
    FUZZ_CHECK(code2 == code);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const apr_uint64_t limits[] = { 0, 1, 125, 126, 65536,
                                           1 << 20 };
    wsp_reader_t rd;
    unsigned char cpay[WSP_CONTROL_MAX];
    unsigned char *buf;
    apr_uint64_t taken = 0;
    apr_size_t pos = 1, chunk;
    unsigned cfg;

    if (size < 1) {
        return 0;
    }
    cfg = data[0];
    wsp_reader_init(&rd, (cfg & 1) ? WSP_FROM_CLIENT : WSP_FROM_SERVER,
                    limits[(cfg >> 1) % 6]);
    chunk = 1 + ((cfg >> 4) * 7);          /* 1..106 bytes per read */
    buf = malloc(size);

    while (pos < size) {
        apr_size_t len = size - pos < chunk ? size - pos : chunk;
        const unsigned char *d = data + pos;

        while (len > 0) {
            apr_size_t used, n;
            int res;

            if (!rd.in_payload) {
                res = wsp_reader_header(&rd, d, len, &used);
                FUZZ_CHECK(used <= len);
                d += used;
                len -= used;
                if (res == WSP_READ_MORE) {
                    FUZZ_CHECK(len == 0);
                    continue;
                }
                if (res != WSP_READ_FRAME) {
                    /* a violation ends the hop */
                    FUZZ_CHECK(res == WSP_CLOSE_PROTOCOL
                               || res == WSP_CLOSE_TOO_BIG);
                    free(buf);
                    return 0;
                }
                check_header(&rd);
                taken = 0;
                if (rd.hdr.len == 0 && rd.hdr.opcode == WSP_OP_CLOSE) {
                    check_close(cpay, 0);
                }
                continue;
            }
            if (WSP_OP_IS_CONTROL(rd.hdr.opcode)) {
                n = wsp_reader_payload(&rd, cpay + rd.offset, d, len, NULL);
            }
            else {
                const unsigned char *ok = (cfg & 8) ? out_key : NULL;
                unsigned char *dst = buf + (d - data);
                apr_uint64_t off = rd.offset;
                apr_size_t i;

                n = wsp_reader_payload(&rd, dst, d, len, ok);
                /* byte by byte, as RFC 6455 5.3 says */
                for (i = 0; i < n; i++) {
                    unsigned char want = d[i];
                    if (rd.hdr.masked) {
                        want ^= rd.hdr.key[(off + i) & 3];
                    }
                    if (ok) {
                        want ^= ok[(off + i) & 3];
                    }
                    FUZZ_CHECK(dst[i] == want);
                }
            }
            FUZZ_CHECK(n > 0 && n <= len);
            taken += n;
            FUZZ_CHECK(taken <= rd.hdr.len);
            d += n;
            len -= n;
            if (!rd.in_payload) {
                FUZZ_CHECK(taken == rd.hdr.len);
                if (rd.hdr.opcode == WSP_OP_CLOSE) {
                    check_close(cpay, (apr_size_t)rd.hdr.len);
                }
            }
        }
        pos += chunk < size - pos ? chunk : size - pos;
    }
    free(buf);
    return 0;
}
