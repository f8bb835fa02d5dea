/* What the benchmark's echo server (wsp_echo.c) and load generator
 * (wsp_load.c) share: SHA-1 and base64 for the RFC 6455 handshake, frame
 * headers, masking, a monotonic clock, a fast PRNG and socket helpers.
 * Plain C and libc only: the benchmark must not depend on what it
 * measures. */
#ifndef WSB_COMMON_H
#define WSB_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define WSB_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* Largest frame either program accepts (the brief: messages up to 16 MB). */
#define WSB_MAX_FRAME ((uint64_t)16 << 20)
/* Largest handshake request or response head. */
#define WSB_MAX_HEAD 8192

enum {
    WSB_OP_CONT = 0x0,
    WSB_OP_TEXT = 0x1,
    WSB_OP_BINARY = 0x2,
    WSB_OP_CLOSE = 0x8,
    WSB_OP_PING = 0x9,
    WSB_OP_PONG = 0xA
};

typedef struct {
    int fin;
    int opcode;
    int masked;
    uint8_t mask[4];
    uint64_t len;       /* payload length */
    size_t hlen;        /* header length, mask included */
} wsb_frame_t;

/* CLOCK_MONOTONIC in nanoseconds (the same clock as Python's
 * time.monotonic_ns(), so the harness and the programs agree). */
uint64_t wsb_now_ns(void);

void wsb_sha1(const void *data, size_t len, uint8_t out[20]);

/* Standard base64 with padding; out needs 4 * ((len + 2) / 3) + 1 bytes.
 * Returns the length written (without the NUL). */
size_t wsb_base64(const uint8_t *in, size_t len, char *out);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (out: 29 bytes). */
void wsb_accept(const char *key, size_t keylen, char out[29]);

/* Parse a frame header from buf. Returns 1 and fills f when the header is
 * complete, 0 when more bytes are needed, -1 when it breaks RFC 6455 in a
 * way the parser cannot skip (a 64-bit length with the top bit set). */
int wsb_parse_header(const uint8_t *buf, size_t avail, wsb_frame_t *f);

/* Write a frame header (at most 14 bytes) and return its length; mask
 * NULL for an unmasked (server) frame. */
size_t wsb_put_header(uint8_t *out, int fin, int opcode, uint64_t len,
                      const uint8_t *mask);

/* XOR len bytes with mask, starting at byte offset `offset` of the frame's
 * payload (so a payload can be unmasked in pieces). */
void wsb_mask(uint8_t *buf, size_t len, const uint8_t mask[4],
              uint64_t offset);

/* xorshift64*: fast, not for secrets. *state must not be 0. */
uint64_t wsb_rand(uint64_t *state);

/* The value of header `name` in an HTTP head (case-insensitive name,
 * leading blanks skipped); NULL if absent. *vlen gets its length. */
const char *wsb_header(const char *head, size_t headlen, const char *name,
                       size_t *vlen);

int wsb_nonblock(int fd);
void wsb_nodelay(int fd);

/* Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft
 * limit now in force. */
long wsb_raise_nofile(void);

#endif /* WSB_COMMON_H */
