/* wsp_load: the benchmark's WebSocket load generator.
 *
 *   wsp_load --port N --path /ws/ --mode rtt|throughput|failover|idle
 *            [--conns N] [--threads T] [--size BYTES] [--duration S]
 *            [--warmup S] [--inflight K] [--interval-ms MS]
 *            [--kill-pid PID] [--kill-after S] [--after S] [--on-port P]
 *            [--concurrency C] [--timeout S]
 *
 * N client connections to ws://127.0.0.1:PORT<path><uuid> (a fresh UUID
 * per connection: mod_ws_persist takes the last path segment as the client
 * id), spread over T threads, each thread one epoll set with non-blocking
 * sockets. Client frames are masked as RFC 6455 requires; the large
 * payloads are masked once up front and sent from one shared buffer, so
 * the generator spends its time on the sockets.
 *
 * Modes (each prints one JSON line on stdout at the end):
 *   rtt         each connection sends SIZE bytes, waits for the echo,
 *               repeats; after WARMUP, DURATION seconds are measured:
 *               round trips/s and latency percentiles in microseconds
 *               (log-linear histogram, < 1 % bucket error).
 *   throughput  each connection keeps INFLIGHT messages of SIZE bytes in
 *               flight; MB/s (10^6 bytes) of echoed payload received.
 *   failover    every connection sends a small message every INTERVAL ms;
 *               KILL-AFTER seconds in, the generator SIGKILLs KILL-PID and
 *               at once (or PROBE-DELAY ms later) sends one message on
 *               every pipe, then goes on every INTERVAL ms. A pipe's gap is
 *               from the kill to the echo of the first message it sent
 *               after the kill. Also counts pipes that were dropped, and
 *               lost, duplicated, reordered or truncated echoes. With
 *               --on-port P a connection is only measured if the backend
 *               answers "whoami" with "port P" (others stay open, idle).
 *               The gap percentiles are over every measured pipe: one
 *               that was dropped or never echoed after the kill counts as
 *               a gap of the whole window (--timeout); gap_recovered_*
 *               are over the recovered pipes only.
 *   idle        opens the connections, prints {"event":"established",...}
 *               and waits for a line on stdin; then every connection
 *               sends one message and the echoes are checked.
 *
 * Exit status: 0 when the figures are clean; 3 when they are not (fewer
 * connections opened than asked, a connection failed, dropped while
 * measured (rtt, throughput, idle), a truncated or oversized echo, an idle
 * echo missing, or in failover mode no kill); the JSON line is printed
 * either way. 1 or 2: could not run at all.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "wsb_common.h"

#define SCRATCH (256 * 1024)
#define NS_PER_S 1000000000ull
#define NS_PER_MS 1000000ull
#define FO_MIN_SIZE 16      /* failover payload: seq (8) + send time (8) */

typedef enum { M_RTT, M_TPUT, M_FAILOVER, M_IDLE } mode_e;

typedef struct {
    int port;
    const char *path;
    mode_e mode;
    int conns;
    int threads;
    size_t size;
    double duration;
    double warmup;
    int inflight;
    double interval_ms;
    double probe_delay_ms;
    pid_t kill_pid;
    double kill_after;
    double after;
    int on_port;
    int concurrency;
    double timeout;
} opts_t;

static opts_t O = {
    .path = "/",
    .mode = M_RTT,
    .conns = 1,
    .threads = 1,
    .size = 64,
    .duration = 5,
    .warmup = 1,
    .inflight = 4,
    .interval_ms = 10,
    .kill_after = 2,
    .after = 1,
    .concurrency = 200,
    .timeout = 60,
};

/* ---- latency histogram: exact below 256 ns, then 128 buckets per power
 * of two (HdrHistogram's idea with 7 significant bits) */

#define H_SUB 128
#define H_BUCKETS (256 + 56 * H_SUB)

typedef struct {
    uint64_t n[H_BUCKETS];
    uint64_t count;
    uint64_t sum;
    uint64_t max;
} hist_t;

static int h_index(uint64_t v)
{
    int e;

    if (v < 256) {
        return (int)v;
    }
    e = 63 - __builtin_clzll(v);
    if (e > 63 - 1) {
        e = 62;
    }
    return 256 + (e - 8) * H_SUB + (int)((v >> (e - 7)) & (H_SUB - 1));
}

static double h_value(int idx)
{
    int e, sub;

    if (idx < 256) {
        return idx;
    }
    e = 8 + (idx - 256) / H_SUB;
    sub = (idx - 256) % H_SUB;
    /* the middle of the bucket */
    return ((double)(H_SUB + sub) + 0.5) * ldexp(1.0, e - 7);
}

static void h_add(hist_t *h, uint64_t v)
{
    h->n[h_index(v)]++;
    h->count++;
    h->sum += v;
    if (v > h->max) {
        h->max = v;
    }
}

static void h_merge(hist_t *to, const hist_t *from)
{
    int i;

    for (i = 0; i < H_BUCKETS; i++) {
        to->n[i] += from->n[i];
    }
    to->count += from->count;
    to->sum += from->sum;
    if (from->max > to->max) {
        to->max = from->max;
    }
}

static double h_pct(const hist_t *h, double p)
{
    uint64_t want, seen = 0;
    int i;

    if (!h->count) {
        return 0;
    }
    want = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (want < 1) {
        want = 1;
    }
    for (i = 0; i < H_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= want) {
            double v = h_value(i);

            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

/* exact percentile of a sorted array (nearest rank) */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static double pct_sorted(const uint64_t *v, size_t n, double p)
{
    size_t rank;

    if (!n) {
        return 0;
    }
    rank = (size_t)ceil(p / 100.0 * (double)n);
    if (rank < 1) {
        rank = 1;
    }
    return (double)v[rank - 1];
}

/* ---- connections */

typedef enum {
    CS_IDLE = 0,        /* not opened */
    CS_CONNECTING,
    CS_HANDSHAKE,
    CS_WHOAMI,
    CS_OPEN,
    CS_CLOSING,         /* we sent a close */
    CS_DONE,            /* socket closed */
    CS_FAILED           /* never opened */
} cstate_e;

struct worker;

typedef struct {
    int fd;
    cstate_e state;
    struct worker *w;
    uint32_t events;
    int counted;            /* measured */
    int excluded;           /* on another backend than --on-port */
    int dropped;            /* closed by the other side while measured */
    int close_code;
    uint64_t closed_at;
    char key[25];
    char *hs;               /* handshake response so far */
    size_t hs_len;
    /* frame parser */
    uint8_t hdr[14];
    size_t hdr_len;
    int in_frame;
    wsb_frame_t fr;
    uint64_t got;           /* payload bytes of this frame so far */
    uint8_t head[32];       /* first bytes of the message */
    size_t head_len;
    uint64_t msg_len;
    int msg_op;
    uint8_t ctl[125];
    /* output: small frames, then repeats of the shared big frame */
    uint8_t *sb;
    size_t sb_off, sb_len, sb_cap;
    uint32_t big_q;
    size_t big_off;
    /* rtt / throughput */
    uint64_t sent_at;
    int outstanding;
    /* failover */
    uint64_t seq_next;      /* next seq to send */
    uint64_t next_send;
    uint64_t max_seen;      /* highest seq echoed + 1 */
    uint8_t *seen;          /* bitmap of echoed seqs */
    size_t seen_cap;        /* bytes */
    uint64_t unique, dups, reordered, badlen;
    uint64_t first_post_seq;    /* first seq sent after the kill */
    int post_sent;
    uint64_t gap_ns;        /* UINT64_MAX: none yet */
    uint64_t last_echo;
    uint64_t max_quiet;     /* longest time between echoes before the kill */
    uint64_t lost_post;     /* sent after the kill, never echoed */
    /* idle verify */
    int verify_sent, verify_ok;
} lconn_t;

typedef struct worker {
    int id;
    int ep;
    int target;             /* measured connections wanted */
    int max_open;           /* connections it may open in all */
    lconn_t *c;
    int nopen;              /* entries of c used */
    int counted;
    int in_progress;
    int failed;
    char first_error[160];
    uint8_t *scratch;
    uint64_t rng;
    hist_t hist;
    uint64_t bytes;         /* throughput: echoed payload in the window */
    uint64_t msgs;
    uint64_t dropped_run;   /* measured connections dropped while running */
    int excluded;
    int ports[4][2];        /* whoami answers: port, count */
} worker_t;

static worker_t *W;
static uint8_t *g_big;          /* the shared pre-masked frame */
static size_t g_big_len;
static pthread_barrier_t g_bar;
static uint64_t g_t0;           /* run start */
static uint64_t g_rec0;         /* measurement window */
static uint64_t g_end;
static _Atomic uint64_t g_kill_ns;
static atomic_int g_go;         /* idle: verify now */
static atomic_int g_workers_done;

/* idle: the verify message (a small frame, whatever --size says) */
static size_t idle_len(void)
{
    return O.size > 256 ? 256 : O.size;
}

static void die(const char *m)
{
    fprintf(stderr, "wsp_load: %s: %s\n", m, strerror(errno));
    exit(1);
}

static void set_error(worker_t *w, const char *fmt, const char *detail)
{
    if (!w->first_error[0]) {
        snprintf(w->first_error, sizeof(w->first_error), fmt, detail);
    }
}

static void update_events(lconn_t *c)
{
    uint32_t ev = EPOLLIN;
    struct epoll_event e;

    if (c->state == CS_CONNECTING || c->sb_off < c->sb_len || c->big_q) {
        ev |= EPOLLOUT;
    }
    if (ev == c->events) {
        return;
    }
    e.events = ev;
    e.data.ptr = c;
    epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void conn_close(lconn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    free(c->hs);
    c->hs = NULL;
    free(c->sb);
    c->sb = NULL;
    c->sb_cap = c->sb_off = c->sb_len = 0;
    c->big_q = 0;
    c->big_off = 0;
    c->closed_at = wsb_now_ns();
}

/* The connection ended before or after its handshake. */
static void conn_lost(lconn_t *c, const char *why)
{
    worker_t *w = c->w;

    if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE
        || c->state == CS_WHOAMI) {
        w->in_progress--;
        w->failed++;
        set_error(w, "%s", why);
        c->state = CS_FAILED;
    }
    else {
        if (c->state == CS_OPEN && c->counted) {
            c->dropped = 1;
            w->dropped_run++;
            if (!c->close_code) {
                c->close_code = 1006;
            }
        }
        c->state = CS_DONE;
    }
    conn_close(c);
}

static int sb_put(lconn_t *c, const void *p, size_t n)
{
    if (c->sb_off == c->sb_len) {
        c->sb_off = c->sb_len = 0;
    }
    if (c->sb_len + n > c->sb_cap) {
        size_t cap = c->sb_cap ? c->sb_cap : 256;
        uint8_t *nb;

        while (cap < c->sb_len + n) {
            cap *= 2;
        }
        nb = realloc(c->sb, cap);
        if (!nb) {
            return -1;
        }
        c->sb = nb;
        c->sb_cap = cap;
    }
    memcpy(c->sb + c->sb_len, p, n);
    c->sb_len += n;
    return 0;
}

/* A small masked frame with a fresh key. */
static int put_frame(lconn_t *c, int opcode, const void *p, size_t n)
{
    uint8_t h[14], mask[4], buf[256];
    uint64_t r = wsb_rand(&c->w->rng);
    size_t hl;

    if (n > sizeof(buf)) {
        return -1;
    }
    memcpy(mask, &r, 4);
    hl = wsb_put_header(h, 1, opcode, n, mask);
    memcpy(buf, p, n);
    wsb_mask(buf, n, mask, 0);
    if (sb_put(c, h, hl) != 0) {
        return -1;
    }
    return sb_put(c, buf, n);
}

/* Send what can go. Never interleaves frames: a big frame once started is
 * finished before small ones, small ones once started before big ones. */
static int flush_out(lconn_t *c)
{
    for (;;) {
        const uint8_t *p;
        size_t len;
        ssize_t n;
        int big;

        if (c->big_off > 0 || (c->sb_off == c->sb_len && c->big_q)) {
            big = 1;
            p = g_big + c->big_off;
            len = g_big_len - c->big_off;
        }
        else if (c->sb_off < c->sb_len) {
            big = 0;
            p = c->sb + c->sb_off;
            len = c->sb_len - c->sb_off;
        }
        else {
            break;
        }
        n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            return -1;
        }
        if (big) {
            c->big_off += (size_t)n;
            if (c->big_off == g_big_len) {
                c->big_off = 0;
                c->big_q--;
            }
        }
        else {
            c->sb_off += (size_t)n;
        }
    }
    update_events(c);
    return 0;
}

static void send_close(lconn_t *c, uint16_t code)
{
    uint8_t p[2] = { (uint8_t)(code >> 8), (uint8_t)code };

    /* no data frame after a close: finish only the one being written */
    c->big_q = c->big_off ? 1 : 0;
    put_frame(c, WSB_OP_CLOSE, p, 2);
    c->state = CS_CLOSING;
}

static void send_big(lconn_t *c)
{
    c->big_q++;
}

/* failover: one message with its seq and send time */
static void send_seq(lconn_t *c, uint64_t now)
{
    uint8_t p[256];
    size_t n = O.size < FO_MIN_SIZE ? FO_MIN_SIZE : O.size;

    if (n > sizeof(p)) {
        n = sizeof(p);
    }
    memset(p, 'x', n);
    memcpy(p, &c->seq_next, 8);
    memcpy(p + 8, &now, 8);
    c->seq_next++;
    put_frame(c, WSB_OP_BINARY, p, n);
}

/* ---- opening */

static void open_one(worker_t *w)
{
    lconn_t *c = &w->c[w->nopen++];
    struct sockaddr_in a;
    struct epoll_event e;
    int fd;

    memset(c, 0, sizeof(*c));
    c->w = w;
    c->gap_ns = UINT64_MAX;
    c->fd = -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        w->failed++;
        set_error(w, "socket: %s", strerror(errno));
        c->state = CS_FAILED;
        return;
    }
    wsb_nodelay(fd);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)O.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0
        && errno != EINPROGRESS) {
        w->failed++;
        set_error(w, "connect: %s", strerror(errno));
        close(fd);
        c->state = CS_FAILED;
        return;
    }
    c->fd = fd;
    c->state = CS_CONNECTING;
    c->events = EPOLLOUT | EPOLLIN;
    e.events = c->events;
    e.data.ptr = c;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &e) != 0) {
        die("epoll_ctl");
    }
    w->in_progress++;
}

static void send_handshake(lconn_t *c)
{
    worker_t *w = c->w;
    uint8_t key[16], u[16];
    char req[512];
    uint64_t r;
    int i, n;

    for (i = 0; i < 16; i += 8) {
        r = wsb_rand(&w->rng);
        memcpy(key + i, &r, 8);
        r = wsb_rand(&w->rng);
        memcpy(u + i, &r, 8);
    }
    u[6] = (uint8_t)((u[6] & 0x0F) | 0x40);     /* UUID version 4 */
    u[8] = (uint8_t)((u[8] & 0x3F) | 0x80);     /* RFC 4122 variant */
    wsb_base64(key, 16, c->key);
    n = snprintf(req, sizeof(req),
                 "GET %s%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                 "%02x%02x%02x%02x%02x%02x HTTP/1.1\r\n"
                 "Host: 127.0.0.1:%d\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n",
                 O.path, u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
                 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15],
                 O.port, c->key);
    sb_put(c, req, (size_t)n);
    c->state = CS_HANDSHAKE;
}

static void became_measured(lconn_t *c)
{
    c->counted = 1;
    c->state = CS_OPEN;
    c->w->counted++;
    c->w->in_progress--;
}

/* The 101 is complete in c->hs[0..hlen). */
static int check_101(lconn_t *c, size_t hlen)
{
    char want[29], status[64];
    const char *acc;
    size_t alen, i;

    if (hlen < 12 || strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        for (i = 0; i < sizeof(status) - 1 && i < hlen
             && c->hs[i] != '\r'; i++) {
            status[i] = c->hs[i];
        }
        status[i] = '\0';
        conn_lost(c, status);
        return -1;
    }
    wsb_accept(c->key, strlen(c->key), want);
    acc = wsb_header(c->hs, hlen, "Sec-WebSocket-Accept", &alen);
    if (!acc || alen != 28 || memcmp(acc, want, 28) != 0) {
        conn_lost(c, "bad Sec-WebSocket-Accept");
        return -1;
    }
    free(c->hs);
    c->hs = NULL;
    if (O.mode == M_FAILOVER) {
        c->state = CS_WHOAMI;
        put_frame(c, WSB_OP_TEXT, "whoami", 6);
    }
    else {
        became_measured(c);
    }
    return 0;
}

/* ---- receiving */

static void on_whoami(lconn_t *c)
{
    worker_t *w = c->w;
    int port = 0, i;

    if (c->head_len > 5 && !memcmp(c->head, "port ", 5)) {
        char b[16];
        size_t n = c->head_len - 5 < 15 ? c->head_len - 5 : 15;

        memcpy(b, c->head + 5, n);
        b[n] = '\0';
        port = atoi(b);
    }
    for (i = 0; i < 4; i++) {
        if (w->ports[i][0] == port || w->ports[i][0] == 0) {
            w->ports[i][0] = port;
            w->ports[i][1]++;
            break;
        }
    }
    if (O.on_port && port != O.on_port) {
        c->excluded = 1;
        c->state = CS_OPEN;
        w->excluded++;
        w->in_progress--;
        return;
    }
    became_measured(c);
}

static void seen_mark(lconn_t *c, uint64_t seq)
{
    size_t byte = (size_t)(seq >> 3);

    if (byte >= c->seen_cap) {
        size_t cap = c->seen_cap ? c->seen_cap : 64;
        uint8_t *n;

        while (cap <= byte) {
            cap *= 2;
        }
        n = realloc(c->seen, cap);
        if (!n) {
            die("realloc");
        }
        memset(n + c->seen_cap, 0, cap - c->seen_cap);
        c->seen = n;
        c->seen_cap = cap;
    }
    if (c->seen[byte] & (1u << (seq & 7))) {
        c->dups++;
        return;
    }
    c->seen[byte] |= (uint8_t)(1u << (seq & 7));
    c->unique++;
    if (seq + 1 < c->max_seen) {
        c->reordered++;
    }
    if (seq + 1 > c->max_seen) {
        c->max_seen = seq + 1;
    }
}

static void on_failover_echo(lconn_t *c, uint64_t now)
{
    size_t want = O.size < FO_MIN_SIZE ? FO_MIN_SIZE : O.size;
    uint64_t kill_ns = atomic_load(&g_kill_ns), seq;

    if (want > 256) {
        want = 256;
    }
    if (c->head_len < FO_MIN_SIZE || c->msg_len != want) {
        c->badlen++;
        return;
    }
    memcpy(&seq, c->head, 8);
    seen_mark(c, seq);
    if (!kill_ns && c->last_echo && now - c->last_echo > c->max_quiet) {
        c->max_quiet = now - c->last_echo;
    }
    c->last_echo = now;
    if (kill_ns && c->post_sent && seq >= c->first_post_seq
        && c->gap_ns == UINT64_MAX) {
        c->gap_ns = now - kill_ns;
    }
}

static void on_message(lconn_t *c, uint64_t now)
{
    worker_t *w = c->w;

    if (c->state == CS_WHOAMI) {
        on_whoami(c);
        return;
    }
    if (c->state != CS_OPEN || !c->counted) {
        return;
    }
    switch (O.mode) {
    case M_RTT:
        if (!c->outstanding) {
            return;
        }
        c->outstanding = 0;
        if (c->msg_len != O.size) {
            c->badlen++;
        }
        if (c->sent_at >= g_rec0 && now <= g_end) {
            h_add(&w->hist, now - c->sent_at);
            w->msgs++;
        }
        if (now < g_end) {
            c->sent_at = now;
            c->outstanding = 1;
            send_big(c);
        }
        break;
    case M_TPUT:
        c->outstanding--;
        if (c->msg_len != O.size) {
            c->badlen++;
        }
        if (now >= g_rec0 && now <= g_end) {
            w->msgs++;
        }
        if (now < g_end) {
            c->outstanding++;
            send_big(c);
        }
        break;
    case M_FAILOVER:
        on_failover_echo(c, now);
        break;
    case M_IDLE:
        if (c->verify_sent && !c->verify_ok) {
            c->verify_ok = c->msg_len == idle_len() ? 1 : -1;
        }
        break;
    }
}

static void on_control(lconn_t *c)
{
    if (c->fr.opcode == WSB_OP_PING) {
        if (c->state == CS_OPEN || c->state == CS_WHOAMI) {
            put_frame(c, WSB_OP_PONG, c->ctl, (size_t)c->fr.len);
        }
    }
    else if (c->fr.opcode == WSB_OP_CLOSE) {
        c->close_code = c->fr.len >= 2 ? (c->ctl[0] << 8 | c->ctl[1]) : 1005;
        if (c->state == CS_CLOSING) {
            c->state = CS_DONE;
            conn_close(c);
        }
        else {
            char why[32];

            snprintf(why, sizeof(why), "close %d", c->close_code);
            conn_lost(c, why);
        }
    }
}

/* Feed received bytes to the frame parser. */
static void on_bytes(lconn_t *c, const uint8_t *p, size_t len, uint64_t now)
{
    worker_t *w = c->w;
    size_t pos = 0;

    while (pos < len && c->fd >= 0) {
        if (!c->in_frame) {
            size_t take = 14 - c->hdr_len, before = c->hdr_len;
            int r;

            if (take > len - pos) {
                take = len - pos;
            }
            memcpy(c->hdr + c->hdr_len, p + pos, take);
            c->hdr_len += take;
            r = wsb_parse_header(c->hdr, c->hdr_len, &c->fr);
            if (r < 0 || (r > 0 && c->fr.masked)) {
                conn_lost(c, "bad frame from server");
                return;
            }
            if (r == 0) {
                pos += take;
                continue;
            }
            pos += c->fr.hlen - before;
            c->hdr_len = 0;
            c->in_frame = 1;
            c->got = 0;
            if (c->fr.opcode < 0x8 && c->fr.opcode != WSB_OP_CONT) {
                c->msg_op = c->fr.opcode;
                c->msg_len = 0;
                c->head_len = 0;
            }
        }
        if (c->got < c->fr.len) {
            size_t n = len - pos;

            if (n > c->fr.len - c->got) {
                n = (size_t)(c->fr.len - c->got);
            }
            if (c->fr.opcode >= 0x8) {
                if (c->got + n <= sizeof(c->ctl)) {
                    memcpy(c->ctl + c->got, p + pos, n);
                }
            }
            else {
                if (c->head_len < sizeof(c->head)) {
                    size_t h = sizeof(c->head) - c->head_len;

                    if (h > n) {
                        h = n;
                    }
                    memcpy(c->head + c->head_len, p + pos, h);
                    c->head_len += h;
                }
                c->msg_len += n;
                if (O.mode == M_TPUT && now >= g_rec0 && now <= g_end
                    && c->counted) {
                    w->bytes += n;
                }
            }
            c->got += n;
            pos += n;
        }
        if (c->got == c->fr.len) {
            c->in_frame = 0;
            if (c->fr.opcode >= 0x8) {
                on_control(c);
            }
            else if (c->fr.fin) {
                on_message(c, now);
            }
        }
    }
}

static void on_handshake_bytes(lconn_t *c, const uint8_t *p, size_t len,
                               uint64_t now)
{
    size_t old = c->hs_len, hlen;
    char *n = realloc(c->hs, c->hs_len + len + 1), *end;

    if (!n) {
        die("realloc");
    }
    c->hs = n;
    memcpy(c->hs + c->hs_len, p, len);
    c->hs_len += len;
    c->hs[c->hs_len] = '\0';
    end = memmem(c->hs, c->hs_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->hs_len > WSB_MAX_HEAD) {
            conn_lost(c, "handshake response too long");
        }
        return;
    }
    hlen = (size_t)(end - c->hs) + 4;
    if (check_101(c, hlen) != 0) {
        return;
    }
    /* frames right behind the 101 */
    if (hlen - old < len) {
        on_bytes(c, p + (hlen - old), len - (hlen - old), now);
    }
}

static void on_readable(lconn_t *c)
{
    worker_t *w = c->w;
    int rounds;

    for (rounds = 0; rounds < 8 && c->fd >= 0; rounds++) {
        ssize_t n = recv(c->fd, w->scratch, SCRATCH, 0);
        uint64_t now;

        if (n == 0) {
            conn_lost(c, "connection closed");
            return;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                conn_lost(c, strerror(errno));
            }
            return;
        }
        now = wsb_now_ns();
        if (c->state == CS_HANDSHAKE) {
            on_handshake_bytes(c, w->scratch, (size_t)n, now);
        }
        else {
            on_bytes(c, w->scratch, (size_t)n, now);
        }
        if ((size_t)n < SCRATCH) {
            return;
        }
    }
}

static void on_event(lconn_t *c, uint32_t ev)
{
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);

        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            errno = err;
            conn_lost(c, strerror(err));
            return;
        }
        send_handshake(c);
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        on_readable(c);
    }
    if (c->fd >= 0 && flush_out(c) != 0) {
        conn_lost(c, strerror(errno));
    }
}

/* One pass of the event loop, at most timeout_ms. */
static void poll_once(worker_t *w, int timeout_ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(w->ep, evs, 512, timeout_ms), i;

    if (n < 0 && errno != EINTR) {
        die("epoll_wait");
    }
    for (i = 0; i < n; i++) {
        on_event(evs[i].data.ptr, evs[i].events);
    }
}

/* Flush every connection that has something queued. */
static void flush_all(worker_t *w)
{
    int i;

    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];

        if (c->fd >= 0 && (c->sb_off < c->sb_len || c->big_q)
            && flush_out(c) != 0) {
            conn_lost(c, strerror(errno));
        }
    }
}

static void establish(worker_t *w)
{
    int per_thread = (O.concurrency + O.threads - 1) / O.threads;
    uint64_t deadline = wsb_now_ns() + (uint64_t)(O.timeout * NS_PER_S);
    int i;

    for (;;) {
        while (w->in_progress < per_thread
               && w->counted + w->in_progress < w->target
               && w->nopen < w->max_open) {
            open_one(w);
        }
        if (w->in_progress == 0) {
            break;
        }
        if (wsb_now_ns() > deadline) {
            for (i = 0; i < w->nopen; i++) {
                lconn_t *c = &w->c[i];

                if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE
                    || c->state == CS_WHOAMI) {
                    conn_lost(c, "timed out opening");
                }
            }
            break;
        }
        poll_once(w, 50);
    }
}

/* ---- running */

static int all_settled_after_kill(worker_t *w)
{
    int i;

    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];

        if (c->counted && c->state == CS_OPEN && c->gap_ns == UINT64_MAX) {
            return 0;
        }
    }
    return 1;
}

static void run_rtt_tput(worker_t *w)
{
    int i, k;

    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];

        if (!c->counted || c->state != CS_OPEN) {
            continue;
        }
        if (O.mode == M_RTT) {
            c->sent_at = wsb_now_ns();
            c->outstanding = 1;
            send_big(c);
        }
        else {
            for (k = 0; k < O.inflight; k++) {
                c->outstanding++;
                send_big(c);
            }
        }
    }
    flush_all(w);
    for (;;) {
        uint64_t now = wsb_now_ns();
        int busy = 0;

        if (now >= g_end) {
            for (i = 0; i < w->nopen; i++) {
                busy |= w->c[i].counted && w->c[i].state == CS_OPEN
                        && w->c[i].outstanding;
            }
            /* wait up to 2 s for the last echoes: they close cleanly */
            if (!busy || now > g_end + 2 * NS_PER_S) {
                break;
            }
        }
        poll_once(w, 10);
    }
}

static void run_failover(worker_t *w)
{
    uint64_t interval = (uint64_t)(O.interval_ms * NS_PER_MS);
    uint64_t start = wsb_now_ns(), stop_sending = 0, hard_end = 0;
    uint64_t probe_delay = (uint64_t)(O.probe_delay_ms * NS_PER_MS);
    int i, seen_kill = 0;

    if (interval < 100000) {
        interval = 100000;
    }
    for (i = 0; i < w->nopen; i++) {
        w->c[i].next_send = start + wsb_rand(&w->rng) % interval;
    }
    for (;;) {
        uint64_t now = wsb_now_ns();
        uint64_t kill_ns = atomic_load(&g_kill_ns);

        if (kill_ns && !seen_kill && now >= kill_ns + probe_delay) {
            seen_kill = 1;
            hard_end = kill_ns + (uint64_t)(O.timeout * NS_PER_S);
            /* the probe: every pipe sends at once */
            for (i = 0; i < w->nopen; i++) {
                lconn_t *c = &w->c[i];

                if (c->counted && c->state == CS_OPEN) {
                    c->first_post_seq = c->seq_next;
                    c->post_sent = 1;
                    send_seq(c, now);
                    c->next_send = now + interval;
                }
            }
        }
        if (!stop_sending) {
            if (seen_kill && all_settled_after_kill(w)) {
                stop_sending = now + (uint64_t)(O.after * NS_PER_S);
            }
            else if (!O.kill_pid && now >= g_end) {
                stop_sending = now;
            }
            else if (hard_end && now >= hard_end) {
                stop_sending = now;
            }
        }
        if (stop_sending && now >= stop_sending) {
            /* one more second for echoes still on their way */
            if (now >= stop_sending + NS_PER_S) {
                break;
            }
        }
        else {
            for (i = 0; i < w->nopen; i++) {
                lconn_t *c = &w->c[i];

                if (c->counted && c->state == CS_OPEN
                    && now >= c->next_send) {
                    send_seq(c, now);
                    c->next_send += interval;
                    if (c->next_send < now) {
                        c->next_send = now + interval;
                    }
                }
            }
        }
        flush_all(w);
        poll_once(w, 1);
    }
    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];
        uint64_t s;

        if (!c->counted || !c->post_sent) {
            continue;
        }
        for (s = c->first_post_seq; s < c->seq_next; s++) {
            size_t byte = (size_t)(s >> 3);

            if (byte >= c->seen_cap || !(c->seen[byte] & (1u << (s & 7)))) {
                c->lost_post++;
            }
        }
    }
}

static void run_idle(worker_t *w)
{
    uint64_t deadline = 0;
    int i;

    while (!atomic_load(&g_go)) {
        poll_once(w, 50);
    }
    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];

        if (c->counted && c->state == CS_OPEN) {
            uint8_t p[256];
            size_t n = idle_len();

            memset(p, 'i', n);
            c->verify_sent = 1;
            put_frame(c, WSB_OP_BINARY, p, n);
        }
    }
    flush_all(w);
    deadline = wsb_now_ns() + (uint64_t)(O.timeout * NS_PER_S);
    for (;;) {
        int waiting = 0;

        for (i = 0; i < w->nopen; i++) {
            lconn_t *c = &w->c[i];

            waiting |= c->verify_sent && !c->verify_ok && c->state == CS_OPEN;
        }
        if (!waiting || wsb_now_ns() > deadline) {
            break;
        }
        poll_once(w, 50);
    }
}

/* Close every open connection with 1000 and wait for the closes. */
static void close_all(worker_t *w)
{
    uint64_t deadline = wsb_now_ns() + 3 * NS_PER_S;
    int i;

    for (i = 0; i < w->nopen; i++) {
        lconn_t *c = &w->c[i];

        if (c->state == CS_OPEN || c->state == CS_WHOAMI) {
            send_close(c, 1000);
        }
    }
    flush_all(w);
    for (;;) {
        int open = 0;

        for (i = 0; i < w->nopen; i++) {
            open += w->c[i].fd >= 0;
        }
        if (!open || wsb_now_ns() > deadline) {
            break;
        }
        poll_once(w, 20);
    }
    for (i = 0; i < w->nopen; i++) {
        if (w->c[i].fd >= 0) {
            w->c[i].state = CS_DONE;
            conn_close(&w->c[i]);
        }
    }
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;

    establish(w);
    pthread_barrier_wait(&g_bar);      /* all opened */
    pthread_barrier_wait(&g_bar);      /* main set the clocks */
    switch (O.mode) {
    case M_RTT:
    case M_TPUT:
        run_rtt_tput(w);
        break;
    case M_FAILOVER:
        run_failover(w);
        break;
    case M_IDLE:
        run_idle(w);
        break;
    }
    atomic_fetch_add(&g_workers_done, 1);
    close_all(w);
    return NULL;
}

/* ---- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: wsp_load --port N --mode rtt|throughput|failover|idle\n"
            "  [--path /ws/] [--conns N] [--threads T] [--size BYTES]\n"
            "  [--duration S] [--warmup S] [--inflight K]\n"
            "  [--interval-ms MS] [--probe-delay-ms MS] [--kill-pid PID]\n"
            "  [--kill-after S]\n"
            "  [--after S] [--on-port P] [--concurrency C] [--timeout S]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!v) {
            usage();
        }
        i++;
        if (!strcmp(a, "--port")) {
            O.port = atoi(v);
        }
        else if (!strcmp(a, "--path")) {
            O.path = v;
        }
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "rtt")) {
                O.mode = M_RTT;
            }
            else if (!strcmp(v, "throughput")) {
                O.mode = M_TPUT;
            }
            else if (!strcmp(v, "failover")) {
                O.mode = M_FAILOVER;
            }
            else if (!strcmp(v, "idle")) {
                O.mode = M_IDLE;
            }
            else {
                usage();
            }
        }
        else if (!strcmp(a, "--conns")) {
            O.conns = atoi(v);
        }
        else if (!strcmp(a, "--threads")) {
            O.threads = atoi(v);
        }
        else if (!strcmp(a, "--size")) {
            O.size = (size_t)strtoull(v, NULL, 10);
        }
        else if (!strcmp(a, "--duration")) {
            O.duration = atof(v);
        }
        else if (!strcmp(a, "--warmup")) {
            O.warmup = atof(v);
        }
        else if (!strcmp(a, "--inflight")) {
            O.inflight = atoi(v);
        }
        else if (!strcmp(a, "--interval-ms")) {
            O.interval_ms = atof(v);
        }
        else if (!strcmp(a, "--probe-delay-ms")) {
            O.probe_delay_ms = atof(v);
        }
        else if (!strcmp(a, "--kill-pid")) {
            O.kill_pid = (pid_t)atoi(v);
        }
        else if (!strcmp(a, "--kill-after")) {
            O.kill_after = atof(v);
        }
        else if (!strcmp(a, "--after")) {
            O.after = atof(v);
        }
        else if (!strcmp(a, "--on-port")) {
            O.on_port = atoi(v);
        }
        else if (!strcmp(a, "--concurrency")) {
            O.concurrency = atoi(v);
        }
        else if (!strcmp(a, "--timeout")) {
            O.timeout = atof(v);
        }
        else {
            usage();
        }
    }
    if (O.port <= 0 || O.port > 65535 || O.conns < 1 || O.threads < 1
        || O.threads > 256 || O.inflight < 1 || O.concurrency < 1
        || O.size < 1 || O.size > WSB_MAX_FRAME || O.duration <= 0) {
        usage();
    }
    if (O.threads > O.conns) {
        O.threads = O.conns;
    }
}

/* The frame every rtt/throughput message is: SIZE bytes, masked once. */
static void build_big(void)
{
    uint8_t mask[4] = { 0x37, 0xfa, 0x21, 0x3d };
    size_t hl, i;

    g_big = malloc(O.size + 14);
    if (!g_big) {
        die("malloc");
    }
    hl = wsb_put_header(g_big, 1, WSB_OP_BINARY, O.size, mask);
    for (i = 0; i < O.size; i++) {
        g_big[hl + i] = (uint8_t)('a' + i % 26);
    }
    wsb_mask(g_big + hl, O.size, mask, 0);
    g_big_len = hl + O.size;
}

typedef struct {
    int opened, counted, failed, excluded;
    uint64_t dropped_run, badlen;
    char first_error[160];
} totals_t;

static void sum_up(totals_t *t)
{
    int i, j;

    memset(t, 0, sizeof(*t));
    for (i = 0; i < O.threads; i++) {
        worker_t *w = &W[i];

        t->opened += w->nopen;
        t->counted += w->counted;
        t->failed += w->failed;
        t->excluded += w->excluded;
        t->dropped_run += w->dropped_run;
        if (!t->first_error[0] && w->first_error[0]) {
            memcpy(t->first_error, w->first_error, sizeof(t->first_error));
        }
        for (j = 0; j < w->nopen; j++) {
            t->badlen += w->c[j].badlen;
        }
    }
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            putchar('\\');
        }
        putchar((unsigned char)*s >= 0x20 ? *s : ' ');
    }
    putchar('"');
}

static void print_common(const char *mode, const totals_t *t)
{
    printf("{\"mode\":\"%s\",\"port\":%d,\"path\":", mode, O.port);
    json_str(O.path);
    printf(",\"conns\":%d,\"threads\":%d,\"size\":%zu,\"established\":%d,"
           "\"failed\":%d,\"first_error\":", O.conns, O.threads, O.size,
           t->counted, t->failed);
    json_str(t->first_error);
    printf(",\"dropped\":%llu,\"bad_length\":%llu",
           (unsigned long long)t->dropped_run,
           (unsigned long long)t->badlen);
}

static void report_failover(const totals_t *t)
{
    uint64_t *gaps = calloc((size_t)t->counted + 1, sizeof(uint64_t));
    uint64_t *quiet = calloc((size_t)t->counted + 1, sizeof(uint64_t));
    uint64_t *drops = calloc((size_t)t->counted + 1, sizeof(uint64_t));
    uint64_t lost = 0, lost_post = 0, dups = 0, reord = 0, sent = 0;
    uint64_t *all = calloc((size_t)t->counted + 1, sizeof(uint64_t));
    uint64_t kill_ns = atomic_load(&g_kill_ns);
    uint64_t window = (uint64_t)(O.timeout * NS_PER_S);
    size_t ng = 0, nq = 0, nd = 0, na = 0;
    int i, j, stalled = 0, k, codes[8][2], ncodes = 0;

    for (i = 0; i < O.threads; i++) {
        for (j = 0; j < W[i].nopen; j++) {
            lconn_t *c = &W[i].c[j];

            if (!c->counted) {
                continue;
            }
            sent += c->seq_next;
            lost += c->seq_next - c->unique;
            lost_post += c->lost_post;
            dups += c->dups;
            reord += c->reordered;
            quiet[nq++] = c->max_quiet;
            /* a pipe that never echoed after the kill waited the whole
             * window: it counts as that, not as nothing */
            all[na++] = c->gap_ns != UINT64_MAX ? c->gap_ns : window;
            if (c->gap_ns != UINT64_MAX) {
                gaps[ng++] = c->gap_ns;
            }
            else if (c->dropped) {
                drops[nd++] = c->closed_at > kill_ns && kill_ns
                              ? c->closed_at - kill_ns : 0;
                for (k = 0; k < ncodes && codes[k][0] != c->close_code; k++) {
                }
                if (k == ncodes && ncodes < 8) {
                    codes[ncodes][0] = c->close_code;
                    codes[ncodes++][1] = 0;
                }
                if (k < ncodes) {
                    codes[k][1]++;
                }
            }
            else if (kill_ns) {
                stalled++;
            }
        }
    }
    qsort(all, na, sizeof(*all), cmp_u64);
    qsort(gaps, ng, sizeof(*gaps), cmp_u64);
    qsort(quiet, nq, sizeof(*quiet), cmp_u64);
    qsort(drops, nd, sizeof(*drops), cmp_u64);
    print_common("failover", t);
    printf(",\"excluded\":%d,\"backends\":{", t->excluded);
    for (i = 0, k = 0; i < O.threads; i++) {
        for (j = 0; j < 4 && W[i].ports[j][0]; j++) {
            printf("%s\"%d\":%d", k++ ? "," : "", W[i].ports[j][0],
                   W[i].ports[j][1]);
        }
    }
    printf("},\"close_codes\":{");
    for (k = 0; k < ncodes; k++) {
        printf("%s\"%d\":%d", k ? "," : "", codes[k][0], codes[k][1]);
    }
    printf("},\"killed\":%s,\"interval_ms\":%g,\"recovered\":%zu,"
           "\"dropped_after_kill\":%zu,\"stalled\":%d,"
           "\"gap_window_ms\":%.3f,"
           "\"gap_p50_ms\":%.3f,\"gap_p99_ms\":%.3f,\"gap_max_ms\":%.3f,"
           "\"gap_recovered_p50_ms\":%.3f,\"gap_recovered_p99_ms\":%.3f,"
           "\"drop_p50_ms\":%.3f,\"drop_p99_ms\":%.3f,"
           "\"quiet_before_p99_ms\":%.3f,"
           "\"sent\":%llu,\"lost\":%llu,\"lost_sent_after_kill\":%llu,"
           "\"duplicated\":%llu,\"reordered\":%llu}\n",
           kill_ns ? "true" : "false", O.interval_ms, ng, nd, stalled,
           (double)window / 1e6,
           pct_sorted(all, na, 50) / 1e6, pct_sorted(all, na, 99) / 1e6,
           na ? (double)all[na - 1] / 1e6 : 0.0,
           pct_sorted(gaps, ng, 50) / 1e6, pct_sorted(gaps, ng, 99) / 1e6,
           pct_sorted(drops, nd, 50) / 1e6, pct_sorted(drops, nd, 99) / 1e6,
           pct_sorted(quiet, nq, 99) / 1e6,
           (unsigned long long)sent, (unsigned long long)lost,
           (unsigned long long)lost_post, (unsigned long long)dups,
           (unsigned long long)reord);
    free(all);
    free(gaps);
    free(quiet);
    free(drops);
}

int main(int argc, char **argv)
{
    pthread_t *tids;
    long nofile;
    int i, per, rest;
    totals_t t;
    uint64_t t_open;
    int unclean = 0;

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    nofile = wsb_raise_nofile();
    if (nofile > 0 && O.conns * (O.on_port ? 2 : 1) + 64 > nofile) {
        fprintf(stderr, "wsp_load: %d connections need more than the %ld "
                "open files allowed (ulimit -n)\n", O.conns, nofile);
        return 1;
    }
    build_big();
    W = calloc((size_t)O.threads, sizeof(*W));
    tids = calloc((size_t)O.threads, sizeof(*tids));
    per = O.conns / O.threads;
    rest = O.conns % O.threads;
    if (pthread_barrier_init(&g_bar, NULL, (unsigned)O.threads + 1) != 0) {
        die("pthread_barrier_init");
    }
    t_open = wsb_now_ns();
    for (i = 0; i < O.threads; i++) {
        worker_t *w = &W[i];

        w->id = i;
        w->target = per + (i < rest);
        /* with --on-port, connections landing elsewhere are replaced */
        w->max_open = O.on_port ? 3 * w->target + 8 : w->target;
        w->c = calloc((size_t)w->max_open, sizeof(lconn_t));
        w->scratch = malloc(SCRATCH);
        w->rng = (wsb_now_ns() ^ ((uint64_t)getpid() << 32))
                 * 0x9E3779B97F4A7C15ULL + (uint64_t)i + 1;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (!w->c || !w->scratch || w->ep < 0) {
            die("setup");
        }
        if (pthread_create(&tids[i], NULL, worker_main, w) != 0) {
            die("pthread_create");
        }
    }
    pthread_barrier_wait(&g_bar);
    sum_up(&t);
    fprintf(stderr, "wsp_load: %d of %d connections open in %.2f s\n",
            t.counted, O.conns, (double)(wsb_now_ns() - t_open) / 1e9);
    g_t0 = wsb_now_ns();
    g_rec0 = g_t0 + (uint64_t)(O.warmup * NS_PER_S);
    g_end = g_rec0 + (uint64_t)(O.duration * NS_PER_S);
    if (O.mode == M_IDLE) {
        char line[64];

        printf("{\"event\":\"established\",\"established\":%d,"
               "\"failed\":%d,\"open_s\":%.3f,\"first_error\":",
               t.counted, t.failed, (double)(g_t0 - t_open) / 1e9);
        json_str(t.first_error);
        printf("}\n");
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin)) {
            line[0] = '\0';
        }
        atomic_store(&g_go, 1);
    }
    pthread_barrier_wait(&g_bar);
    if (O.mode == M_FAILOVER && O.kill_pid > 0) {
        uint64_t at = g_t0 + (uint64_t)(O.kill_after * NS_PER_S);
        uint64_t now;

        while ((now = wsb_now_ns()) < at
               && atomic_load(&g_workers_done) < O.threads) {
            usleep(500);
        }
        if (atomic_load(&g_workers_done) < O.threads) {
            atomic_store(&g_kill_ns, wsb_now_ns());
            if (kill(O.kill_pid, SIGKILL) != 0) {
                fprintf(stderr, "wsp_load: kill %d: %s\n", (int)O.kill_pid,
                        strerror(errno));
            }
        }
    }
    for (i = 0; i < O.threads; i++) {
        pthread_join(tids[i], NULL);
    }
    sum_up(&t);
    /* figures from fewer connections than asked, or with errors, are not
     * the figures asked for */
    if (t.counted < O.conns || t.failed || t.badlen
        || (O.mode != M_FAILOVER && t.dropped_run)
        || (O.mode == M_FAILOVER && O.kill_pid > 0
            && !atomic_load(&g_kill_ns))) {
        unclean = 1;
    }
    if (O.mode == M_RTT || O.mode == M_TPUT) {
        hist_t h;

        memset(&h, 0, sizeof(h));
        for (i = 0; i < O.threads; i++) {
            h_merge(&h, &W[i].hist);
        }
        print_common(O.mode == M_RTT ? "rtt" : "throughput", &t);
        if (O.mode == M_RTT) {
            printf(",\"duration\":%g,\"round_trips\":%llu,\"rt_per_s\":%.1f,"
                   "\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
                   "\"p99_us\":%.1f,\"max_us\":%.1f}\n", O.duration,
                   (unsigned long long)h.count,
                   (double)h.count / O.duration,
                   h.count ? (double)h.sum / (double)h.count / 1e3 : 0.0,
                   h_pct(&h, 50) / 1e3, h_pct(&h, 90) / 1e3,
                   h_pct(&h, 99) / 1e3, (double)h.max / 1e3);
        }
        else {
            uint64_t bytes = 0, msgs = 0;

            for (i = 0; i < O.threads; i++) {
                bytes += W[i].bytes;
                msgs += W[i].msgs;
            }
            printf(",\"duration\":%g,\"inflight\":%d,\"bytes\":%llu,"
                   "\"messages\":%llu,\"mb_per_s\":%.1f}\n", O.duration,
                   O.inflight, (unsigned long long)bytes,
                   (unsigned long long)msgs,
                   (double)bytes / O.duration / 1e6);
        }
    }
    else if (O.mode == M_FAILOVER) {
        report_failover(&t);
    }
    else {
        int ok = 0, bad = 0, j;

        for (i = 0; i < O.threads; i++) {
            for (j = 0; j < W[i].nopen; j++) {
                lconn_t *c = &W[i].c[j];

                if (c->verify_sent) {
                    ok += c->verify_ok == 1;
                    bad += c->verify_ok != 1;
                }
            }
        }
        print_common("idle", &t);
        printf(",\"verified\":%d,\"verify_failed\":%d}\n", ok, bad);
        if (bad || ok < t.counted) {
            unclean = 1;
        }
    }
    fflush(stdout);
    return unclean ? 3 : 0;
}
