/* RFC 6455 frame codec. APR only, no httpd headers: unit-tested and fuzzed
 * on its own. One reader per direction of one hop. */
#ifndef WSP_FRAME_H
#define WSP_FRAME_H

#include <apr.h>

#define WSP_OP_CONT    0x0
#define WSP_OP_TEXT    0x1
#define WSP_OP_BINARY  0x2
#define WSP_OP_CLOSE   0x8
#define WSP_OP_PING    0x9
#define WSP_OP_PONG    0xA
#define WSP_OP_IS_CONTROL(op) (((op) & 0x8) != 0)

#define WSP_FRAME_HDR_MAX 14   /* 2 + 8 (length) + 4 (mask key) */
#define WSP_CONTROL_MAX   125

#define WSP_CLOSE_NORMAL         1000
#define WSP_CLOSE_GOING_AWAY     1001
#define WSP_CLOSE_PROTOCOL       1002
#define WSP_CLOSE_NO_STATUS      1005
#define WSP_CLOSE_ABNORMAL       1006
#define WSP_CLOSE_INVALID_DATA   1007
#define WSP_CLOSE_POLICY         1008
#define WSP_CLOSE_TOO_BIG        1009
#define WSP_CLOSE_MANDATORY_EXT  1010
#define WSP_CLOSE_INTERNAL       1011
#define WSP_CLOSE_RESTART        1012
#define WSP_CLOSE_TRY_AGAIN      1013
#define WSP_CLOSE_BAD_GATEWAY    1014
#define WSP_CLOSE_SESSION_GONE   4410   /* a resume cannot be honoured */

/* Who sent the frames a reader parses: a client masks, a server does not. */
typedef enum {
    WSP_FROM_CLIENT,
    WSP_FROM_SERVER
} wsp_from_e;

typedef struct {
    int fin;
    int rsv;                 /* the three RSV bits, 0 when valid */
    int opcode;
    int masked;
    unsigned char key[4];
    apr_uint64_t len;        /* payload length */
} wsp_frame_hdr_t;

typedef struct {
    wsp_from_e from;
    apr_uint64_t max_message;      /* 0: no limit */
    unsigned char hbuf[WSP_FRAME_HDR_MAX];
    apr_size_t hlen;               /* header bytes gathered so far */
    wsp_frame_hdr_t hdr;           /* the current frame, once parsed */
    int in_payload;                /* header parsed, payload pending */
    apr_uint64_t remaining;        /* payload bytes still to come */
    apr_uint64_t offset;           /* payload bytes taken so far */
    int msg_opcode;                /* opcode of an unfinished fragmented
                                    * message, 0 when none */
    apr_uint64_t msg_len;          /* payload bytes of that message so far */
} wsp_reader_t;

#define WSP_READ_MORE  0           /* all input used, header incomplete */
#define WSP_READ_FRAME 1           /* rd->hdr is a valid header */

void wsp_reader_init(wsp_reader_t *rd, wsp_from_e from,
                     apr_uint64_t max_message);

/* Gather and check a frame header. Uses at most len bytes (*used says how
 * many). Returns WSP_READ_MORE, WSP_READ_FRAME, or the close code the
 * violation calls for (1002 protocol error, 1009 message too big). After
 * WSP_READ_FRAME the payload is taken with wsp_reader_payload(). */
int wsp_reader_header(wsp_reader_t *rd, const unsigned char *data,
                      apr_size_t len, apr_size_t *used);

/* Take up to len payload bytes of the current frame into dst, unmasked with
 * the frame's key and, when out_key is not NULL, masked with out_key (one
 * pass, one copy). Returns the bytes taken; when rd->remaining reaches 0 the
 * frame is done and the reader expects the next header. */
apr_size_t wsp_reader_payload(wsp_reader_t *rd, unsigned char *dst,
                              const unsigned char *src, apr_size_t len,
                              const unsigned char *out_key);

/* Write a frame header into out (WSP_FRAME_HDR_MAX bytes). key NULL: the
 * frame is unmasked. Returns the header length. */
apr_size_t wsp_frame_header(unsigned char *out, int fin, int opcode,
                            apr_uint64_t len, const unsigned char *key);

/* XOR len bytes of src with key starting at key position offset into dst
 * (dst may equal src). */
void wsp_mask(unsigned char *dst, const unsigned char *src, apr_size_t len,
              const unsigned char key[4], apr_uint64_t offset);

/* Check a close payload sent by a client. Returns 0 when valid (code 1005
 * when empty), 1002 for a bad length or code, 1007 when the reason is not
 * UTF-8. reason points into payload; on error the outputs are untouched.
 * Same as wsp_close_parse_from(WSP_FROM_CLIENT, ...). */
int wsp_close_parse(const unsigned char *payload, apr_size_t len, int *code,
                    const char **reason, apr_size_t *reason_len);

/* As wsp_close_parse() for a close sent by from: a server's 1010 is also
 * 1002 (RFC 6455 7.4.1 gives 1010 to clients; a server that lacks an
 * extension fails the handshake instead). */
int wsp_close_parse_from(wsp_from_e from, const unsigned char *payload,
                         apr_size_t len, int *code, const char **reason,
                         apr_size_t *reason_len);

/* Whether a code may be sent in a close frame by some endpoint (RFC 6455
 * 7.4, IANA registry); who may send it is wsp_close_parse_from()'s. */
int wsp_close_code_valid(int code);

/* Whether s is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF, no sequence cut short). */
int wsp_utf8_valid(const unsigned char *s, apr_size_t len);

/* Write a close payload (code + reason truncated to fit 125 bytes, at a
 * character boundary) into out; returns its length. code 1005 writes an
 * empty payload. A valid code and a UTF-8 reason give a payload that
 * wsp_close_parse() accepts. */
apr_size_t wsp_close_payload(unsigned char *out, int code,
                             const char *reason, apr_size_t reason_len);

/* An acknowledgement (DESIGN 7): a pong whose payload is "wsp-ack:K",
 * K in ASCII decimal. Returns 1 with *k set, or 0 for any other pong. */
#define WSP_ACK_PREFIX "wsp-ack:"
int wsp_ack_parse(const unsigned char *payload, apr_size_t len,
                  apr_uint64_t *k);

#endif /* WSP_FRAME_H */
