/* RFC 6455 frame codec. APR only, no httpd headers. */
#include <string.h>

#include "wsp_frame.h"
#include "wsp_parse.h"

void wsp_reader_init(wsp_reader_t *rd, wsp_from_e from,
                     apr_uint64_t max_message)
{
    memset(rd, 0, sizeof(*rd));
    rd->from = from;
    rd->max_message = max_message;
}

/* Header bytes a frame needs, known once its first two bytes are in. */
static apr_size_t wsp_header_need(const unsigned char *h)
{
    apr_size_t need = 2;
    unsigned len7 = h[1] & 0x7F;

    if (len7 == 126) {
        need += 2;
    }
    else if (len7 == 127) {
        need += 8;
    }
    return need + ((h[1] & 0x80) ? 4 : 0);
}

/* Checks that need only the first two bytes: a doomed frame fails before
 * the rest of its header arrives. */
static int wsp_header_check_start(const wsp_reader_t *rd,
                                  const unsigned char *h)
{
    int opcode = h[0] & 0x0F;
    int masked = (h[1] & 0x80) != 0;

    if (h[0] & 0x70) {
        return WSP_CLOSE_PROTOCOL;
    }
    if ((opcode > WSP_OP_BINARY && opcode < WSP_OP_CLOSE)
        || opcode > WSP_OP_PONG) {
        return WSP_CLOSE_PROTOCOL;
    }
    if (WSP_OP_IS_CONTROL(opcode)
        && (!(h[0] & 0x80) || (h[1] & 0x7F) > WSP_CONTROL_MAX)) {
        return WSP_CLOSE_PROTOCOL;
    }
    if (masked != (rd->from == WSP_FROM_CLIENT)) {
        return WSP_CLOSE_PROTOCOL;
    }
    return 0;
}

static void wsp_header_decode(wsp_frame_hdr_t *hdr, const unsigned char *h)
{
    unsigned len7 = h[1] & 0x7F;
    apr_size_t pos = 2;

    hdr->fin = (h[0] & 0x80) != 0;
    hdr->rsv = (h[0] >> 4) & 0x7;
    hdr->opcode = h[0] & 0x0F;
    hdr->masked = (h[1] & 0x80) != 0;
    if (len7 == 126) {
        hdr->len = ((apr_uint64_t)h[2] << 8) | h[3];
        pos = 4;
    }
    else if (len7 == 127) {
        int i;
        hdr->len = 0;
        for (i = 0; i < 8; i++) {
            hdr->len = (hdr->len << 8) | h[2 + i];
        }
        pos = 10;
    }
    else {
        hdr->len = len7;
    }
    if (hdr->masked) {
        memcpy(hdr->key, h + pos, 4);
    }
    else {
        memset(hdr->key, 0, 4);
    }
}

/* Message state rules for a complete data frame header; updates the state
 * when the frame is acceptable. */
static int wsp_header_check_message(wsp_reader_t *rd)
{
    const wsp_frame_hdr_t *hdr = &rd->hdr;
    apr_uint64_t so_far = 0;

    if (hdr->opcode == WSP_OP_CONT) {
        if (!rd->msg_opcode) {
            return WSP_CLOSE_PROTOCOL;
        }
        so_far = rd->msg_len;
    }
    else if (rd->msg_opcode) {
        return WSP_CLOSE_PROTOCOL;
    }
    /* so_far never exceeds max_message, so this cannot wrap. */
    if (rd->max_message && hdr->len > rd->max_message - so_far) {
        return WSP_CLOSE_TOO_BIG;
    }
    if (hdr->fin) {
        rd->msg_opcode = 0;
        rd->msg_len = 0;
    }
    else {
        if (hdr->opcode != WSP_OP_CONT) {
            rd->msg_opcode = hdr->opcode;
        }
        rd->msg_len = so_far + hdr->len;
    }
    return 0;
}

int wsp_reader_header(wsp_reader_t *rd, const unsigned char *data,
                      apr_size_t len, apr_size_t *used)
{
    apr_size_t need, take;
    int rv;

    *used = 0;
    if (rd->in_payload) {
        /* The current frame's payload is still due. */
        return WSP_READ_FRAME;
    }
    if (rd->hlen < 2) {
        take = 2 - rd->hlen < len ? 2 - rd->hlen : len;
        memcpy(rd->hbuf + rd->hlen, data, take);
        rd->hlen += take;
        *used = take;
        if (rd->hlen < 2) {
            return WSP_READ_MORE;
        }
        if ((rv = wsp_header_check_start(rd, rd->hbuf)) != 0) {
            return rv;
        }
    }
    need = wsp_header_need(rd->hbuf);
    take = need - rd->hlen < len - *used ? need - rd->hlen : len - *used;
    memcpy(rd->hbuf + rd->hlen, data + *used, take);
    rd->hlen += take;
    *used += take;
    if (rd->hlen < need) {
        return WSP_READ_MORE;
    }

    wsp_header_decode(&rd->hdr, rd->hbuf);
    rd->hlen = 0;
    if (rd->hdr.len >> 63) {
        return WSP_CLOSE_PROTOCOL;
    }
    if (!WSP_OP_IS_CONTROL(rd->hdr.opcode)
        && (rv = wsp_header_check_message(rd)) != 0) {
        return rv;
    }
    rd->remaining = rd->hdr.len;
    rd->offset = 0;
    rd->in_payload = rd->hdr.len > 0;
    return WSP_READ_FRAME;
}

apr_size_t wsp_reader_payload(wsp_reader_t *rd, unsigned char *dst,
                              const unsigned char *src, apr_size_t len,
                              const unsigned char *out_key)
{
    apr_size_t n;

    if (!rd->in_payload) {
        return 0;
    }
    n = rd->remaining < len ? (apr_size_t)rd->remaining : len;
    if (rd->hdr.masked && out_key) {
        /* Unmask and re-mask in one pass: both keys run at the same
         * payload offset, so their XOR is a key of its own. */
        unsigned char k[4];
        int i;
        for (i = 0; i < 4; i++) {
            k[i] = rd->hdr.key[i] ^ out_key[i];
        }
        wsp_mask(dst, src, n, k, rd->offset);
    }
    else if (rd->hdr.masked || out_key) {
        wsp_mask(dst, src, n, rd->hdr.masked ? rd->hdr.key : out_key,
                 rd->offset);
    }
    else if (dst != src) {
        memmove(dst, src, n);
    }
    rd->offset += n;
    rd->remaining -= n;
    if (!rd->remaining) {
        rd->in_payload = 0;
    }
    return n;
}

apr_size_t wsp_frame_header(unsigned char *out, int fin, int opcode,
                            apr_uint64_t len, const unsigned char *key)
{
    apr_size_t pos = 2;
    unsigned char mask_bit = key ? 0x80 : 0;

    out[0] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = mask_bit | (unsigned char)len;
    }
    else if (len <= 0xFFFF) {
        out[1] = mask_bit | 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        pos = 4;
    }
    else {
        int i;
        out[1] = mask_bit | 127;
        for (i = 0; i < 8; i++) {
            out[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        }
        pos = 10;
    }
    if (key) {
        memcpy(out + pos, key, 4);
        pos += 4;
    }
    return pos;
}

void wsp_mask(unsigned char *dst, const unsigned char *src, apr_size_t len,
              const unsigned char key[4], apr_uint64_t offset)
{
    unsigned char k[8];
    apr_uint64_t kw;
    apr_size_t i = 0;
    int j;

    for (j = 0; j < 8; j++) {
        k[j] = key[(offset + j) & 3];
    }
    /* Bytes up to an aligned destination, then eight at a time. memcpy
     * keeps unaligned source loads legal; compilers emit plain moves. */
    while (i < len && ((apr_uintptr_t)(dst + i) & 7)) {
        dst[i] = src[i] ^ k[i & 3];
        i++;
    }
    if (len - i >= 8) {
        unsigned char r[8];
        for (j = 0; j < 8; j++) {
            r[j] = k[(i + j) & 3];
        }
        memcpy(&kw, r, 8);
        for (; len - i >= 8; i += 8) {
            apr_uint64_t w;
            memcpy(&w, src + i, 8);
            w ^= kw;
            memcpy(dst + i, &w, 8);
        }
    }
    for (; i < len; i++) {
        dst[i] = src[i] ^ k[i & 3];
    }
}

int wsp_close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003)
           || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}

/* Unicode's table of well-formed sequences (RFC 3629 section 4): the
 * second byte's range shuts out overlong forms (after E0, F0), surrogates
 * (after ED) and code points past U+10FFFF (after F4); C0, C1 and F5..FF
 * never lead. */
int wsp_utf8_valid(const unsigned char *s, apr_size_t len)
{
    apr_size_t i = 0, n, k;
    unsigned char lo, hi;

    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        lo = 0x80;
        hi = 0xBF;
        if (s[i] >= 0xC2 && s[i] <= 0xDF) {
            n = 1;
        }
        else if (s[i] >= 0xE0 && s[i] <= 0xEF) {
            n = 2;
            lo = s[i] == 0xE0 ? 0xA0 : lo;
            hi = s[i] == 0xED ? 0x9F : hi;
        }
        else if (s[i] >= 0xF0 && s[i] <= 0xF4) {
            n = 3;
            lo = s[i] == 0xF0 ? 0x90 : lo;
            hi = s[i] == 0xF4 ? 0x8F : hi;
        }
        else {
            return 0;
        }
        if (len - i <= n || s[i + 1] < lo || s[i + 1] > hi) {
            return 0;
        }
        for (k = 2; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += n + 1;
    }
    return 1;
}

/* Who may send which code: 1010 says the server left out an extension the
 * client needs, so only a client sends it. 1011 reads "a server" in RFC
 * 6455, but no rule bars a client from it, erratum 3227 rewords it "a
 * remote endpoint" and Autobahn's case 7.7.9 has a client send it:
 * accepted from both, as 1012 to 1014 are. wsp_close_code_valid() stays
 * about codes alone, for the configuration and the codes we send. */
int wsp_close_parse_from(wsp_from_e from, const unsigned char *payload,
                         apr_size_t len, int *code, const char **reason,
                         apr_size_t *reason_len)
{
    int c;

    if (len == 0) {
        *code = WSP_CLOSE_NO_STATUS;
        *reason = "";
        *reason_len = 0;
        return 0;
    }
    if (len == 1 || len > WSP_CONTROL_MAX) {
        return WSP_CLOSE_PROTOCOL;
    }
    c = (payload[0] << 8) | payload[1];
    if (!wsp_close_code_valid(c)
        || (c == WSP_CLOSE_MANDATORY_EXT && from != WSP_FROM_CLIENT)) {
        return WSP_CLOSE_PROTOCOL;
    }
    /* RFC 6455 8.1: a reason that is not UTF-8 fails the connection. */
    if (!wsp_utf8_valid(payload + 2, len - 2)) {
        return WSP_CLOSE_INVALID_DATA;
    }
    *code = c;
    *reason = (const char *)payload + 2;
    *reason_len = len - 2;
    return 0;
}

int wsp_close_parse(const unsigned char *payload, apr_size_t len, int *code,
                    const char **reason, apr_size_t *reason_len)
{
    return wsp_close_parse_from(WSP_FROM_CLIENT, payload, len, code, reason,
                                reason_len);
}

apr_size_t wsp_close_payload(unsigned char *out, int code,
                             const char *reason, apr_size_t reason_len)
{
    if (code == WSP_CLOSE_NO_STATUS) {
        return 0;
    }
    out[0] = (unsigned char)(code >> 8);
    out[1] = (unsigned char)code;
    if (!reason) {
        reason_len = 0;
    }
    if (reason_len > WSP_CONTROL_MAX - 2) {
        /* Cut before the character that does not fit: half a character
         * fails the close with 1007 (8.1) at a peer that checks, as
         * wsp_close_parse() does. */
        reason_len = WSP_CONTROL_MAX - 2;
        while (reason_len && ((unsigned char)reason[reason_len] & 0xC0)
                             == 0x80) {
            reason_len--;
        }
    }
    if (reason_len) {
        memcpy(out + 2, reason, reason_len);
    }
    return 2 + reason_len;
}

int wsp_ack_parse(const unsigned char *payload, apr_size_t len,
                  apr_uint64_t *k)
{
    apr_size_t pre = sizeof(WSP_ACK_PREFIX) - 1;

    return len > pre && !memcmp(payload, WSP_ACK_PREFIX, pre)
           && wsp_parse_count((const char *)payload + pre, len - pre, k);
}
