/* wsp_echo: the benchmark's WebSocket echo backend.
 *
 *   wsp_echo --port N [--threads T]
 *
 * Listens on 127.0.0.1:N (T threads, each with its own SO_REUSEPORT
 * listener and epoll set, level-triggered, non-blocking sockets), answers
 * the RFC 6455 server handshake on any path and echoes every data frame as
 * it arrives: the payload is unmasked straight into the output, so a 16 MB
 * message is never held whole. Answers pings, echoes a close and then
 * closes. The text message "whoami" is answered with "port N" instead of
 * its echo, so a client can tell two backends apart. Prints "ready" on
 * stdout once it listens. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wsb_common.h"

#define SCRATCH (256 * 1024)
/* Stop reading a connection whose unsent echo passes HIGH; resume below
 * LOW. Keeps a client that does not read from growing our memory. */
#define OUT_HIGH (4u << 20)
#define OUT_LOW (1u << 20)

typedef struct {
    int fd;
    int open;               /* handshake done */
    int closing;            /* close sent: close the socket once flushed */
    uint32_t events;        /* epoll interest now registered */
    /* bytes of an incomplete head, frame header or control frame */
    uint8_t *pend;
    size_t pend_len;
    /* the data frame being echoed */
    int streaming;
    uint64_t remain;
    uint64_t moff;
    uint8_t mask[4];
    /* unsent output */
    uint8_t *out;
    size_t out_off, out_len, out_cap;
} econn_t;

typedef struct {
    int port;
    int lfd;
    int ep;
    uint8_t *scratch;
} eworker_t;

static int g_port;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int out_reserve(econn_t *c, size_t more)
{
    size_t need;

    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
    }
    else if (c->out_off > 0 && c->out_off >= c->out_cap / 2) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    need = c->out_len + more;
    if (need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        uint8_t *n;

        while (cap < need) {
            cap *= 2;
        }
        n = realloc(c->out, cap);
        if (!n) {
            return -1;
        }
        c->out = n;
        c->out_cap = cap;
    }
    return 0;
}

static int out_put(econn_t *c, const void *p, size_t n)
{
    if (out_reserve(c, n) != 0) {
        return -1;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static int out_frame(econn_t *c, int opcode, const void *p, size_t n)
{
    uint8_t h[14];

    if (out_put(c, h, wsb_put_header(h, 1, opcode, n, NULL)) != 0) {
        return -1;
    }
    return out_put(c, p, n);
}

static void econn_free(eworker_t *w, econn_t *c)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c->out);
    free(c);
}

static void set_events(eworker_t *w, econn_t *c)
{
    size_t unsent = c->out_len - c->out_off;
    uint32_t ev = 0;

    if (!c->closing && unsent < (c->events & EPOLLIN ? OUT_HIGH : OUT_LOW)) {
        ev |= EPOLLIN;
    }
    if (unsent) {
        ev |= EPOLLOUT;
    }
    if (ev != c->events) {
        struct epoll_event e = { .events = ev, .data.ptr = c };

        epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &e);
        c->events = ev;
    }
}

/* Send what we can. -1: the connection is gone. */
static int flush_out(econn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);

        if (n > 0) {
            c->out_off += (size_t)n;
        }
        else if (n < 0 && errno == EINTR) {
            continue;
        }
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        else {
            return -1;
        }
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > 65536) {
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }
    return 0;
}

static void send_close(econn_t *c, uint16_t code)
{
    uint8_t p[2] = { (uint8_t)(code >> 8), (uint8_t)code };

    out_frame(c, WSB_OP_CLOSE, p, 2);
    c->closing = 1;
}

/* The handshake: consume the request head at buf. Returns bytes used, 0
 * when incomplete, -1 to drop the connection. */
static ssize_t do_handshake(econn_t *c, const uint8_t *buf, size_t len)
{
    const char *head = (const char *)buf, *key;
    const uint8_t *end = memmem(buf, len, "\r\n\r\n", 4);
    size_t hlen, klen;
    char accept[29], resp[256];
    int n;

    if (!end) {
        return len > WSB_MAX_HEAD ? -1 : 0;
    }
    hlen = (size_t)(end - buf) + 4;
    key = wsb_header(head, hlen, "Sec-WebSocket-Key", &klen);
    if (!key || klen == 0 || klen > 64) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\n"
                                  "Content-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        out_put(c, bad, sizeof(bad) - 1);
        c->closing = 1;
        return (ssize_t)hlen;
    }
    wsb_accept(key, klen, accept);
    n = snprintf(resp, sizeof(resp),
                 "HTTP/1.1 101 Switching Protocols\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    out_put(c, resp, (size_t)n);
    c->open = 1;
    return (ssize_t)hlen;
}

/* A control frame or a "whoami" candidate, whole at p. */
static int do_whole_frame(econn_t *c, const wsb_frame_t *f, uint8_t *p)
{
    wsb_mask(p, f->len, f->mask, 0);
    switch (f->opcode) {
    case WSB_OP_PING:
        return out_frame(c, WSB_OP_PONG, p, f->len);
    case WSB_OP_PONG:
        return 0;
    case WSB_OP_CLOSE:
        if (f->len >= 2) {
            uint16_t code = (uint16_t)(p[0] << 8 | p[1]);

            send_close(c, code);
        }
        else {
            out_frame(c, WSB_OP_CLOSE, NULL, 0);
            c->closing = 1;
        }
        return 0;
    default:
        if (f->len == 6 && !memcmp(p, "whoami", 6)) {
            char b[32];
            int n = snprintf(b, sizeof(b), "port %d", g_port);

            return out_frame(c, WSB_OP_TEXT, b, (size_t)n);
        }
        return out_frame(c, f->opcode, p, f->len);
    }
}

/* Echo the frames in buf[0..len). Returns the bytes consumed (the rest is
 * an incomplete header or control frame), or -1 to drop. */
static ssize_t do_frames(econn_t *c, uint8_t *buf, size_t len)
{
    size_t pos = 0;

    while (pos < len && !c->closing) {
        wsb_frame_t f;
        int r;

        if (c->streaming) {
            size_t n = len - pos;

            if (n > c->remain) {
                n = (size_t)c->remain;
            }
            if (out_reserve(c, n) != 0) {
                return -1;
            }
            memcpy(c->out + c->out_len, buf + pos, n);
            wsb_mask(c->out + c->out_len, n, c->mask, c->moff);
            c->out_len += n;
            c->moff += n;
            c->remain -= n;
            pos += n;
            if (c->remain == 0) {
                c->streaming = 0;
            }
            continue;
        }
        r = wsb_parse_header(buf + pos, len - pos, &f);
        if (r == 0) {
            break;
        }
        if (r < 0 || !f.masked || (buf[pos] & 0x70)) {
            send_close(c, 1002);
            break;
        }
        if (f.len > WSB_MAX_FRAME) {
            send_close(c, 1009);
            break;
        }
        if (f.opcode >= 0x8 || (f.fin && f.opcode == WSB_OP_TEXT
                                && f.len == 6)) {
            if (f.opcode >= 0x8 && f.len > 125) {
                send_close(c, 1002);
                break;
            }
            if (len - pos < f.hlen + f.len) {
                break;
            }
            if (do_whole_frame(c, &f, buf + pos + f.hlen) != 0) {
                return -1;
            }
            pos += f.hlen + (size_t)f.len;
            continue;
        }
        {
            uint8_t h[14];

            if (out_put(c, h, wsb_put_header(h, f.fin, f.opcode, f.len,
                                             NULL)) != 0) {
                return -1;
            }
        }
        pos += f.hlen;
        memcpy(c->mask, f.mask, 4);
        c->moff = 0;
        c->remain = f.len;
        c->streaming = f.len > 0;
    }
    if (c->closing) {
        return (ssize_t)len;     /* ignore whatever follows a close */
    }
    return (ssize_t)pos;
}

static int process(econn_t *c, uint8_t *buf, size_t len)
{
    size_t pos = 0;
    ssize_t used;

    if (!c->open) {
        used = do_handshake(c, buf, len);
        if (used < 0) {
            return -1;
        }
        pos += (size_t)used;
    }
    if (c->open && pos < len) {
        used = do_frames(c, buf + pos, len - pos);
        if (used < 0) {
            return -1;
        }
        pos += (size_t)used;
    }
    /* keep the incomplete rest for the next read */
    if (pos < len) {
        uint8_t *n = realloc(c->pend, len - pos);

        if (!n) {
            return -1;
        }
        memmove(n, buf + pos, len - pos);
        c->pend = n;
        c->pend_len = len - pos;
    }
    else {
        free(c->pend);
        c->pend = NULL;
        c->pend_len = 0;
    }
    return 0;
}

/* Readable: read into the worker's scratch after the pending bytes. */
static int on_read(eworker_t *w, econn_t *c)
{
    int rounds;

    for (rounds = 0; rounds < 4; rounds++) {
        size_t pend = c->pend_len;
        ssize_t n;

        if (pend >= SCRATCH / 2) {
            return -1;
        }
        memcpy(w->scratch, c->pend, pend);
        n = recv(c->fd, w->scratch + pend, SCRATCH - pend, 0);
        if (n == 0) {
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        if (process(c, w->scratch, pend + (size_t)n) != 0) {
            return -1;
        }
        if (c->closing || c->out_len - c->out_off >= OUT_HIGH
            || (size_t)n < SCRATCH - pend) {
            break;
        }
    }
    return 0;
}

static void on_accept(eworker_t *w)
{
    for (;;) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        econn_t *c;
        struct epoll_event e;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "wsp_echo: accept: %s\n", strerror(errno));
            }
            return;
        }
        wsb_nodelay(fd);
        c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->events = EPOLLIN;
        e.events = EPOLLIN;
        e.data.ptr = c;
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &e) != 0) {
            close(fd);
            free(c);
        }
    }
}

static void *worker_main(void *arg)
{
    eworker_t *w = arg;
    struct epoll_event evs[256];

    for (;;) {
        int n = epoll_wait(w->ep, evs, 256, -1), i;

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        for (i = 0; i < n; i++) {
            econn_t *c = evs[i].data.ptr;
            int bad = 0;

            if (!c) {
                on_accept(w);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                bad = on_read(w, c) != 0;
            }
            if (!bad && flush_out(c) != 0) {
                bad = 1;
            }
            if (!bad && c->closing && c->out_off == c->out_len) {
                bad = 1;    /* our close is sent: the server closes first */
            }
            if (bad) {
                econn_free(w, c);
            }
            else {
                set_events(w, c);
            }
        }
    }
    return NULL;
}

static int listen_on(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        die("socket");
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        die("bind");
    }
    if (listen(fd, 4096) != 0) {
        die("listen");
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: wsp_echo --port N [--threads T]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int threads = 1, i;
    pthread_t *tids;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            g_port = atoi(argv[++i]);
        }
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        }
        else {
            usage();
        }
    }
    if (g_port <= 0 || g_port > 65535 || threads < 1 || threads > 64) {
        usage();
    }
    signal(SIGPIPE, SIG_IGN);
    wsb_raise_nofile();
    tids = calloc((size_t)threads, sizeof(*tids));
    for (i = 0; i < threads; i++) {
        eworker_t *w = calloc(1, sizeof(*w));
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };

        w->port = g_port;
        w->lfd = listen_on(g_port);
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->scratch = malloc(SCRATCH);
        if (w->ep < 0 || !w->scratch) {
            die("setup");
        }
        epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &e);
        if (pthread_create(&tids[i], NULL, worker_main, w) != 0) {
            die("pthread_create");
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
    }
    return 0;
}
