/* Shared helpers of the benchmark programs; see wsb_common.h. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "wsb_common.h"

uint64_t wsb_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- SHA-1 (FIPS 180-4), enough for handshakes: one call, whole input */

static uint32_t rol32(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80], a, b, c, d, e, f, k, t;
    int i;

    for (i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16
               | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (i = 16; i < 80; i++) {
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        }
        else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        }
        else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        }
        else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        t = rol32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = rol32(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

void wsb_sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476,
                      0xC3D2E1F0 };
    const uint8_t *p = data;
    uint8_t tail[128];
    uint64_t bits = (uint64_t)len * 8;
    size_t rest, tlen, i;

    for (; len >= 64; p += 64, len -= 64) {
        sha1_block(h, p);
    }
    rest = len;
    memset(tail, 0, sizeof(tail));
    memcpy(tail, p, rest);
    tail[rest] = 0x80;
    tlen = rest + 1 + 8 <= 64 ? 64 : 128;
    for (i = 0; i < 8; i++) {
        tail[tlen - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    sha1_block(h, tail);
    if (tlen == 128) {
        sha1_block(h, tail + 64);
    }
    for (i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

size_t wsb_base64(const uint8_t *in, size_t len, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8
                     | in[i + 2];

        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16
                     | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);

        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

void wsb_accept(const char *key, size_t keylen, char out[29])
{
    char buf[128 + sizeof(WSB_GUID)];
    uint8_t digest[20];

    if (keylen > 128) {
        keylen = 128;
    }
    memcpy(buf, key, keylen);
    memcpy(buf + keylen, WSB_GUID, sizeof(WSB_GUID) - 1);
    wsb_sha1(buf, keylen + sizeof(WSB_GUID) - 1, digest);
    wsb_base64(digest, 20, out);
}

/* ---- frames */

int wsb_parse_header(const uint8_t *buf, size_t avail, wsb_frame_t *f)
{
    size_t need = 2;
    uint64_t len;
    int i;

    if (avail < 2) {
        return 0;
    }
    f->fin = buf[0] >> 7;
    f->opcode = buf[0] & 0x0F;
    f->masked = buf[1] >> 7;
    len = buf[1] & 0x7F;
    if (len == 126) {
        need += 2;
    }
    else if (len == 127) {
        need += 8;
    }
    if (f->masked) {
        need += 4;
    }
    if (avail < need) {
        return 0;
    }
    if (len == 126) {
        len = (uint64_t)buf[2] << 8 | buf[3];
    }
    else if (len == 127) {
        len = 0;
        for (i = 0; i < 8; i++) {
            len = len << 8 | buf[2 + i];
        }
        if (len >> 63) {
            return -1;
        }
    }
    if (f->masked) {
        memcpy(f->mask, buf + need - 4, 4);
    }
    f->len = len;
    f->hlen = need;
    return 1;
}

size_t wsb_put_header(uint8_t *out, int fin, int opcode, uint64_t len,
                      const uint8_t *mask)
{
    size_t n = 2;
    int i;

    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
    }
    else if (len < 65536) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    }
    else {
        out[1] = 127;
        for (i = 0; i < 8; i++) {
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        }
        n = 10;
    }
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

void wsb_mask(uint8_t *buf, size_t len, const uint8_t mask[4],
              uint64_t offset)
{
    uint8_t k[8];
    uint64_t k8, w;
    size_t i = 0;
    int j;

    for (j = 0; j < 8; j++) {
        k[j] = mask[(offset + (uint64_t)j) & 3];
    }
    memcpy(&k8, k, 8);
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, buf + i, 8);
        w ^= k8;
        memcpy(buf + i, &w, 8);
    }
    for (; i < len; i++) {
        buf[i] ^= k[i & 7];
    }
}

uint64_t wsb_rand(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

const char *wsb_header(const char *head, size_t headlen, const char *name,
                       size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = head, *end = head + headlen;

    /* skip the request or status line */
    while (p < end && *p != '\n') {
        p++;
    }
    while (p < end) {
        const char *line = ++p, *eol;

        while (p < end && *p != '\n') {
            p++;
        }
        eol = p;
        if (eol > line && eol[-1] == '\r') {
            eol--;
        }
        if ((size_t)(eol - line) > nlen && line[nlen] == ':'
            && !strncasecmp(line, name, nlen)) {
            const char *v = line + nlen + 1;

            while (v < eol && (*v == ' ' || *v == '\t')) {
                v++;
            }
            while (eol > v && (eol[-1] == ' ' || eol[-1] == '\t')) {
                eol--;
            }
            *vlen = (size_t)(eol - v);
            return v;
        }
    }
    return NULL;
}

/* ---- sockets */

int wsb_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);

    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void wsb_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

long wsb_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return -1;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}
