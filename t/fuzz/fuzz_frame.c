/* libFuzzer target: the RFC 6455 frame reader (wsp_frame.c).
 *
 * The input is a byte stream as one hop would deliver it. Its first byte
 * picks the direction (client frames are masked, server frames are not),
 * the message limit and how the stream is cut into reads; the rest is fed
 * to a reader as the pipe feeds it: headers, then payload into a buffer,
 * unmasked and re-masked in one pass. What the reader promises is checked
 * on the way: a header it accepts is one the encoder writes back the same,
 * control frames are final and short, a message never passes the limit,
 * and a close payload is judged as an oracle written from RFC 6455 7.4,
 * 8.1 and RFC 3629 judges it, for the reader's direction and the other,
 * and once accepted can be rebuilt. The same bytes, read as code points,
 * also make a long UTF-8 reason for wsp_close_payload() to cut. */
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

/* UTF-8 decoded the plain way, apart from the codec's table: count the
 * lead's ones, gather the code point, then ask whether that length was
 * the shortest for it and whether it is a scalar value. */
static int ref_utf8_valid(const unsigned char *s, apr_size_t len)
{
    static const apr_uint32_t min_cp[] = { 0, 0, 0x80, 0x800, 0x10000 };
    apr_size_t i = 0, n, k;
    apr_uint32_t cp;

    while (i < len) {
        unsigned char c = s[i];

        n = 0;
        while (n < 8 && (c & (0x80 >> n))) {
            n++;
        }
        if (n == 0) {
            i++;
            continue;
        }
        if (n == 1 || n > 4 || len - i < n) {
            return 0;
        }
        cp = c & (0x7F >> n);
        for (k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min_cp[n] || cp > 0x10FFFF
            || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += n;
    }
    return 1;
}

static apr_size_t ref_utf8_encode(unsigned char *out, apr_uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* What a close payload from `from` must get, from the RFCs' words. */
static int ref_close_verdict(wsp_from_e from, const unsigned char *pl,
                             apr_size_t len)
{
    int code;

    if (len == 0) {
        return 0;
    }
    if (len == 1 || len > WSP_CONTROL_MAX) {
        return WSP_CLOSE_PROTOCOL;
    }
    code = (pl[0] << 8) | pl[1];
    if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014)
          || (code >= 3000 && code <= 4999))) {
        return WSP_CLOSE_PROTOCOL;
    }
    if (code == 1010 && from == WSP_FROM_SERVER) {
        return WSP_CLOSE_PROTOCOL;
    }
    return ref_utf8_valid(pl + 2, len - 2) ? 0 : WSP_CLOSE_INVALID_DATA;
}

/* Rebuild an accepted close and parse it again from the same side. */
static void check_close_rebuilt(wsp_from_e from, int code,
                                const char *reason, apr_size_t rlen)
{
    unsigned char again[WSP_CONTROL_MAX];
    const char *reason2;
    apr_size_t rlen2, n;
    int code2;

    n = wsp_close_payload(again, code, reason, rlen);
    FUZZ_CHECK(n <= WSP_CONTROL_MAX);
    FUZZ_CHECK(wsp_close_parse_from(from, again, n, &code2, &reason2,
                                    &rlen2) == 0);
    FUZZ_CHECK(code2 == code);
    FUZZ_CHECK(rlen2 == rlen && !memcmp(reason2, reason, rlen));
}

static void check_close(const unsigned char *pl, apr_size_t len)
{
    static const wsp_from_e sides[] = { WSP_FROM_CLIENT, WSP_FROM_SERVER };
    const char *reason;
    apr_size_t rlen, i;
    int code, rv, rv_client = -1;

    for (i = 0; i < 2; i++) {
        code = -1;
        rv = wsp_close_parse_from(sides[i], pl, len, &code, &reason, &rlen);
        FUZZ_CHECK(rv == ref_close_verdict(sides[i], pl, len));
        if (sides[i] == WSP_FROM_CLIENT) {
            rv_client = rv;
        }
        if (rv != 0) {
            FUZZ_CHECK(code == -1);
            continue;
        }
        FUZZ_CHECK(code == WSP_CLOSE_NO_STATUS || wsp_close_code_valid(code));
        FUZZ_CHECK(sides[i] == WSP_FROM_CLIENT
                   || code != WSP_CLOSE_MANDATORY_EXT);
        FUZZ_CHECK(rlen <= WSP_CONTROL_MAX - 2);
        FUZZ_CHECK(ref_utf8_valid((const unsigned char *)reason, rlen));
        check_close_rebuilt(sides[i], code, reason, rlen);
    }
    /* the old entry point is the client side */
    FUZZ_CHECK(wsp_close_parse(pl, len, &code, &reason, &rlen) == rv_client);
}

/* A reason longer than a close can carry, of code points taken from the
 * input (1 to 4 bytes each, the class from the input too): the payload
 * must keep the longest whole-character prefix that fits and parse back
 * from both sides. */
static void check_close_cut(const uint8_t *data, size_t size)
{
    static const int codes[] = { 1000, 1001, 1010, 1011, 3000, 4999 };
    unsigned char reason[WSP_CONTROL_MAX + 64], out[WSP_CONTROL_MAX];
    apr_size_t rlen = 0, n, want = 0, got_len;
    const char *got;
    size_t i;
    int code, got_code;

    for (i = 0; i + 3 <= size && rlen + 4 <= sizeof(reason); i += 3) {
        apr_uint32_t v = ((apr_uint32_t)data[i + 1] << 8) | data[i + 2];
        apr_uint32_t cp;

        switch (data[i] & 3) {
        case 0:
            cp = v & 0x7F;
            break;
        case 1:
            cp = 0x80 + v % (0x800 - 0x80);
            break;
        case 2:
            cp = 0x800 + v % (0x10000 - 0x800 - 0x800);
            cp += cp >= 0xD800 ? 0x800 : 0;   /* skip the surrogates */
            break;
        default:
            cp = 0x10000 + (((apr_uint32_t)(data[i] >> 2) << 16) | v)
                           % 0x100000;
            break;
        }
        n = ref_utf8_encode(reason + rlen, cp);
        rlen += n;
        if (rlen <= WSP_CONTROL_MAX - 2) {
            want = rlen;
        }
    }
    FUZZ_CHECK(ref_utf8_valid(reason, rlen));
    FUZZ_CHECK(wsp_utf8_valid(reason, rlen));
    code = codes[(size ? data[0] : 0) % 6];
    n = wsp_close_payload(out, code, (const char *)reason, rlen);
    FUZZ_CHECK(n == 2 + want);
    FUZZ_CHECK(!memcmp(out + 2, reason, want));
    FUZZ_CHECK(wsp_close_parse(out, n, &got_code, &got, &got_len) == 0);
    FUZZ_CHECK(got_code == code && got_len == want);
    FUZZ_CHECK(wsp_close_parse_from(WSP_FROM_SERVER, out, n, &got_code,
                                    &got, &got_len)
               == (code == WSP_CLOSE_MANDATORY_EXT ? WSP_CLOSE_PROTOCOL : 0));
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
    /* the codec's UTF-8 check against the plain decoder, on any bytes */
    FUZZ_CHECK(wsp_utf8_valid(data, size) == ref_utf8_valid(data, size));
    check_close_cut(data + 1, size - 1);
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
