/* The TLS layer of a wss:// backend connection (wsp_backend.c has the
 * rest of the connection).
 *
 * wss:// backends go through mod_ssl's support for outgoing connections,
 * as mod_proxy's do (ap_proxy_connection_create_ex): a conn_rec of their
 * own, ap_ssl_bind_outgoing() and the pre_connection hooks, so that the
 * vhost's SSLProxy* directives (engine, CA, verify mode and depth, peer
 * name and expiry checks, client certificate, protocols, ciphers) apply
 * exactly as mod_ssl implements them. Below mod_ssl the core's network
 * filters are replaced by two of ours that never block.
 *
 * mod_ssl's client handshake cannot be driven without blocking: its
 * filters call SSL_connect() once, from the first read or write, and
 * treat SSL_ERROR_WANT_READ as a failed handshake (ssl_engine_io.c,
 * ssl_io_filter_handshake); reads during it are blocking reads. So the
 * handshake runs on a small stack of its own (a ucontext coroutine, as
 * OpenSSL's own ASYNC jobs do): when our input filter would block it
 * switches back to the pipe, which polls the socket and resumes the
 * coroutine when it is readable. The pipe's thread never waits; a
 * handshake that does not finish is ended by the pipe's per-attempt
 * deadline, which resumes the coroutine once more with an error so that
 * mod_ssl unwinds and frees what it holds. The coroutine runs in
 * whichever thread runs the pipe; only one thread at a time does. */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <apr_strings.h>

#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_ssl.h"
#include "util_filter.h"

#include "wsp_backend.h"
#include "wsp_tls.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define WSP_ASAN_FIBERS 1
#endif

#define WSP_TLS_RECORD   16384               /* a full record's plaintext */
#define WSP_TLS_SEND_MAX (4 * WSP_TLS_RECORD) /* plaintext per send call */
#define WSP_TLS_RMAX     (18432 + 5)         /* largest record on the wire */
#define WSP_TLS_STACK    (256 * 1024)        /* the handshake's stack */
#define WSP_TLS_GUARD    4096

typedef enum {
    WSP_CO_NONE,                   /* no handshake started */
    WSP_CO_RUNNING,                /* started, waits for the socket */
    WSP_CO_DONE                    /* the stack is gone */
} wsp_co_e;

struct wsp_tls_s {
    wsp_bconn_t *bc;
    conn_rec *c;
    apr_bucket_brigade *bb;        /* one call's buckets through c */
    apr_bucket_brigade *pend;      /* records the socket did not take yet */
    apr_size_t pend_bytes;
    apr_status_t werr;             /* the socket's write error, sticky */
    apr_status_t rerr;             /* mod_ssl's read error, sticky */
    int eof;                       /* the socket's read side ended */
    int drained;                   /* the last fill read until EAGAIN */
    int established;               /* mod_ssl's handshake succeeded */
    apr_size_t owed;               /* 0 or 1, see wsp_tls_sendv() */
    char owed_byte;

    /* the handshake's coroutine */
    wsp_co_e co;
    int abort;                     /* make the input filter fail */
    apr_int16_t want;              /* events the coroutine waits for */
    apr_status_t hs_rv;
    char *map;                     /* guard page and stack */
    ucontext_t caller;
    ucontext_t uc;
    volatile int caller_back;      /* see wsp_co_switch() */
    volatile int uc_back;
#ifdef WSP_ASAN_FIBERS
    void *fake;
    const void *caller_bottom;
    size_t caller_size;
#endif
};

static apr_status_t wsp_net_in(ap_filter_t *f, apr_bucket_brigade *bb,
                               ap_input_mode_t mode, apr_read_type_e block,
                               apr_off_t readbytes);
static apr_status_t wsp_net_out(ap_filter_t *f, apr_bucket_brigade *bb);

/* Never registered: added by handle to our own connections only. */
static ap_filter_rec_t wsp_net_in_rec = {
    .name = "WSP_BACKEND_NET_IN",
    .filter_func = { .in_func = wsp_net_in },
    .ftype = AP_FTYPE_NETWORK
};
static ap_filter_rec_t wsp_net_out_rec = {
    .name = "WSP_BACKEND_NET_OUT",
    .filter_func = { .out_func = wsp_net_out },
    .ftype = AP_FTYPE_NETWORK
};

/* ---- the handshake's coroutine ----------------------------------------- */

/* swapcontext(), made of getcontext() and setcontext(): ASan intercepts
 * swapcontext() only to warn that it cannot follow it, and follows this
 * switch through the fiber annotations around it. *back tells the first
 * return of getcontext() from the one when from is resumed. */
static void wsp_co_switch(ucontext_t *from, volatile int *back,
                          const ucontext_t *to)
{
    *back = 0;
    getcontext(from);
    if (!*back) {
        *back = 1;
        setcontext(to);
    }
}

/* From the pipe into the coroutine, until it waits or ends. */
static void wsp_co_enter(wsp_tls_t *t)
{
#ifdef WSP_ASAN_FIBERS
    void *fake = NULL;

    __sanitizer_start_switch_fiber(&fake, t->map + WSP_TLS_GUARD,
                                   WSP_TLS_STACK);
#endif
    wsp_co_switch(&t->caller, &t->caller_back, &t->uc);
#ifdef WSP_ASAN_FIBERS
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

/* In the coroutine: back to the pipe until the socket is ready. */
static void wsp_co_wait(wsp_tls_t *t, apr_int16_t want)
{
    t->want = want;
#ifdef WSP_ASAN_FIBERS
    __sanitizer_start_switch_fiber(&t->fake, t->caller_bottom,
                                   t->caller_size);
#endif
    wsp_co_switch(&t->uc, &t->uc_back, &t->caller);
#ifdef WSP_ASAN_FIBERS
    __sanitizer_finish_switch_fiber(t->fake, &t->caller_bottom,
                                    &t->caller_size);
#endif
}

/* makecontext() passes ints: the pointer comes in two halves. */
static void wsp_co_main(unsigned int hi, unsigned int lo)
{
    wsp_tls_t *t = (wsp_tls_t *)(uintptr_t)(((apr_uint64_t)hi << 32) | lo);

#ifdef WSP_ASAN_FIBERS
    __sanitizer_finish_switch_fiber(NULL, &t->caller_bottom,
                                    &t->caller_size);
#endif
    /* mod_ssl's own client handshake and checks; its reads come to
     * wsp_net_in() as blocking reads, which wait in wsp_co_wait() */
    t->hs_rv = ap_get_brigade(t->c->input_filters, t->bb, AP_MODE_INIT,
                              APR_BLOCK_READ, 0);
    apr_brigade_cleanup(t->bb);
    t->co = WSP_CO_DONE;
#ifdef WSP_ASAN_FIBERS
    __sanitizer_start_switch_fiber(NULL, t->caller_bottom, t->caller_size);
#endif
    setcontext(&t->caller);
}

static apr_status_t wsp_co_start(wsp_tls_t *t)
{
    apr_uint64_t v = (apr_uint64_t)(uintptr_t)t;

    t->map = mmap(NULL, WSP_TLS_GUARD + WSP_TLS_STACK,
                  PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
                  | MAP_STACK, -1, 0);
    if (t->map == MAP_FAILED) {
        t->map = NULL;
        return APR_FROM_OS_ERROR(errno);
    }
    /* an overflow faults instead of writing over other memory */
    mprotect(t->map, WSP_TLS_GUARD, PROT_NONE);
#ifdef WSP_ASAN_FIBERS
    /* the shadow of an earlier stack at this address may remain */
    ASAN_UNPOISON_MEMORY_REGION(t->map + WSP_TLS_GUARD, WSP_TLS_STACK);
#endif
    if (getcontext(&t->uc) != 0) {
        return APR_FROM_OS_ERROR(errno);
    }
    t->uc.uc_stack.ss_sp = t->map + WSP_TLS_GUARD;
    t->uc.uc_stack.ss_size = WSP_TLS_STACK;
    t->uc.uc_link = NULL;
    makecontext(&t->uc, (void (*)(void))wsp_co_main, 2,
                (unsigned int)(v >> 32), (unsigned int)v);
    t->co = WSP_CO_RUNNING;
    return APR_SUCCESS;
}

/* A handshake still waiting is made to fail, so that mod_ssl returns
 * through its own error path; then the stack goes. */
static void wsp_co_end(wsp_tls_t *t)
{
    int i;

    for (i = 0; t->co == WSP_CO_RUNNING && i < 8; i++) {
        t->abort = 1;
        wsp_co_enter(t);
    }
    if (t->map && t->co != WSP_CO_RUNNING) {
#ifdef WSP_ASAN_FIBERS
        ASAN_UNPOISON_MEMORY_REGION(t->map + WSP_TLS_GUARD, WSP_TLS_STACK);
#endif
        munmap(t->map, WSP_TLS_GUARD + WSP_TLS_STACK);
        t->map = NULL;
    }
}

static apr_status_t wsp_tls_cleanup(void *data)
{
    wsp_co_end(data);
    return APR_SUCCESS;
}

/* ---- our network filters under mod_ssl --------------------------------- */

/* Write what the socket takes of the records set aside. */
static apr_status_t wsp_tls_flush(wsp_tls_t *t)
{
    while (t->pend_bytes > 0 && !t->werr) {
        struct iovec vec[16];
        apr_bucket *b;
        apr_size_t n = 0;
        apr_status_t rv;
        int nvec = 0;

        for (b = APR_BRIGADE_FIRST(t->pend);
             b != APR_BRIGADE_SENTINEL(t->pend) && nvec < 16;
             b = APR_BUCKET_NEXT(b)) {
            const char *d;
            apr_size_t len;

            if (apr_bucket_read(b, &d, &len, APR_BLOCK_READ) != APR_SUCCESS) {
                break;
            }
            vec[nvec].iov_base = (void *)d;
            vec[nvec++].iov_len = len;
        }
        rv = apr_socket_sendv(t->bc->sock, vec, nvec, &n);
        t->pend_bytes -= n;
        while (n > 0) {
            b = APR_BRIGADE_FIRST(t->pend);
            if (n >= b->length) {
                n -= b->length;
                apr_bucket_delete(b);
            }
            else {
                b->start += n;
                b->length -= n;
                n = 0;
            }
        }
        if (APR_STATUS_IS_EAGAIN(rv)) {
            return rv;
        }
        if (rv != APR_SUCCESS) {
            t->werr = rv;
        }
    }
    return t->werr;
}

/* mod_ssl's records: written at once where the socket takes them, the
 * rest set aside for wsp_tls_flush(). Never blocks, never refuses data
 * (mod_ssl cannot take a record back), FLUSH buckets change nothing. */
static apr_status_t wsp_net_out(ap_filter_t *f, apr_bucket_brigade *bb)
{
    wsp_tls_t *t = f->ctx;
    apr_bucket *b;

    while ((b = APR_BRIGADE_FIRST(bb)) != APR_BRIGADE_SENTINEL(bb)) {
        const char *d;
        apr_size_t len, n;
        apr_status_t rv;

        if (APR_BUCKET_IS_METADATA(b) || t->werr) {
            apr_bucket_delete(b);
            continue;
        }
        rv = apr_bucket_read(b, &d, &len, APR_BLOCK_READ);
        if (rv != APR_SUCCESS) {
            apr_brigade_cleanup(bb);
            return rv;
        }
        if (t->pend_bytes == 0 && len > 0) {
            n = len;
            rv = apr_socket_send(t->bc->sock, d, &n);
            if (rv != APR_SUCCESS && !APR_STATUS_IS_EAGAIN(rv)) {
                t->werr = rv;
            }
            d += n;
            len -= n;
        }
        if (len > 0 && !t->werr) {
            /* copied: the bucket points into OpenSSL's buffer */
            APR_BRIGADE_INSERT_TAIL(t->pend, apr_bucket_heap_create(d, len,
                                    NULL, t->pend->bucket_alloc));
            t->pend_bytes += len;
        }
        apr_bucket_delete(b);
    }
    return t->werr;
}

/* mod_ssl's reads: at most what it asks for, so no raw bytes wait out of
 * poll's sight, and without blocking. A blocking read in the handshake's
 * coroutine waits for the socket there instead. */
static apr_status_t wsp_net_in(ap_filter_t *f, apr_bucket_brigade *bb,
                               ap_input_mode_t mode, apr_read_type_e block,
                               apr_off_t readbytes)
{
    wsp_tls_t *t = f->ctx;

    if (mode == AP_MODE_INIT) {
        return APR_SUCCESS;
    }
    if (mode != AP_MODE_READBYTES) {
        return APR_ENOTIMPL;
    }
    if (readbytes <= 0 || readbytes > WSP_TLS_RMAX) {
        readbytes = WSP_TLS_RMAX;
    }
    for (;;) {
        apr_size_t n = (apr_size_t)readbytes;
        apr_status_t rv;
        char *buf;

        if (t->abort) {
            return APR_ECONNABORTED;
        }
        /* OpenSSL asks for a record header, then its body: no more */
        buf = apr_bucket_alloc(n, f->c->bucket_alloc);
        rv = apr_socket_recv(t->bc->sock, buf, &n);
        if (n > 0) {
            APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create(buf, n,
                                    apr_bucket_free, f->c->bucket_alloc));
            return APR_SUCCESS;
        }
        apr_bucket_free(buf);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            if (block == APR_BLOCK_READ && t->co == WSP_CO_RUNNING) {
                wsp_tls_flush(t);
                wsp_co_wait(t, APR_POLLIN);
                continue;
            }
            return rv;
        }
        if (rv == APR_SUCCESS || APR_STATUS_IS_EOF(rv)) {
            t->eof = 1;
            return APR_EOF;
        }
        return rv;
    }
}

/* ---- the TLS connection ------------------------------------------------ */

/* The conn_rec for the backend, as mod_proxy makes one; NULL or why not. */
static const char *wsp_tls_open(wsp_bconn_t *bc)
{
    apr_pool_t *p = bc->pool;
    apr_bucket_alloc_t *ba = apr_bucket_alloc_create(p);
    wsp_tls_t *t = apr_pcalloc(p, sizeof(*t));
    ap_filter_t *f, *next;
    conn_rec *c;
    int rc;

    t->bc = bc;
    t->bb = apr_brigade_create(p, ba);
    t->pend = apr_brigade_create(p, ba);
    apr_pool_pre_cleanup_register(p, t, wsp_tls_cleanup);
    bc->tls = t;

    c = ap_run_create_connection(p, bc->s, bc->sock, 0, NULL, ba);
    if (!c) {
        return "TLS: cannot make a connection record";
    }
    t->c = c;
    if (ap_ssl_bind_outgoing(c, NULL, 1) != OK) {
        return "TLS: needs mod_ssl and SSLProxyEngine on in this virtual "
               "host";
    }
    /* SNI (not for an IP address) and SSLProxyCheckPeerName use it */
    apr_table_setn(c->notes, "proxy-request-hostname", bc->be->host);
    rc = ap_run_pre_connection(c, bc->sock);
    /* the core set the TimeOut; this socket never waits */
    apr_socket_timeout_set(bc->sock, 0);
    if ((rc != OK && rc != DONE) || c->aborted) {
        return "TLS: mod_ssl could not set up the connection";
    }
    if (!ap_ssl_conn_is_ssl(c)) {
        /* never speak clear text to a wss:// backend */
        return "TLS: mod_ssl did not take the connection (SSLProxyEngine)";
    }
    for (f = c->input_filters; f; f = next) {
        next = f->next;
        if (f->frec == ap_core_input_filter_handle) {
            ap_remove_input_filter(f);
        }
    }
    for (f = c->output_filters; f; f = next) {
        next = f->next;
        if (f->frec == ap_core_output_filter_handle) {
            ap_remove_output_filter(f);
        }
    }
    /* its header-phase timeouts are no business of a backend hop; the
     * coalescing filter would hold small frames back */
    ap_remove_input_filter_byhandle(c->input_filters, "reqtimeout");
    ap_remove_output_filter_byhandle(c->output_filters,
                                     "SSL/TLS Coalescing Filter");
    ap_add_input_filter_handle(&wsp_net_in_rec, t, NULL, c);
    ap_add_output_filter_handle(&wsp_net_out_rec, t, NULL, c);
    /* mod_ssl notes a read wanted during a write in c->cs */
    c->cs = apr_pcalloc(p, sizeof(*c->cs));
    return NULL;
}

/* Move mod_ssl's handshake on: WSP_HS_MORE, WSP_HS_OK or WSP_HS_FAIL. */
int wsp_tls_handshake(wsp_bconn_t *bc, const char **why)
{
    wsp_tls_t *t = bc->tls;
    apr_status_t rv;

    if (!t) {
        if ((*why = wsp_tls_open(bc))) {
            return WSP_HS_FAIL;
        }
        t = bc->tls;
    }
    if (t->co == WSP_CO_NONE && (rv = wsp_co_start(t)) != APR_SUCCESS) {
        *why = wsp_bconn_errtext(bc->pool, "TLS: no stack for the "
                                 "handshake", rv);
        return WSP_HS_FAIL;
    }
    if (wsp_tls_flush(t) != APR_SUCCESS && t->werr) {
        *why = wsp_bconn_errtext(bc->pool, "TLS: sending the handshake",
                                 t->werr);
        return WSP_HS_FAIL;
    }
    wsp_co_enter(t);
    if (t->co == WSP_CO_RUNNING) {
        wsp_tls_flush(t);
        return WSP_HS_MORE;
    }
    wsp_co_end(t);
    if (t->hs_rv != APR_SUCCESS) {
        /* mod_ssl logged why (verify errors at error, the rest at info) */
        *why = t->eof ? "TLS handshake failed: connection closed"
             : t->werr ? wsp_bconn_errtext(bc->pool,
                                           "TLS handshake failed", t->werr)
             : "TLS handshake failed (certificate not trusted or not for "
               "this host, or no common protocol: mod_ssl logs why, at "
               "LogLevel ssl:info)";
        return WSP_HS_FAIL;
    }
    t->established = 1;
    return WSP_HS_OK;
}

/* Records set aside go out first; then what the state waits for. */
apr_int16_t wsp_tls_handshake_events(const wsp_bconn_t *bc)
{
    const wsp_tls_t *t = bc->tls;
    apr_int16_t ev = t->pend_bytes > 0 ? APR_POLLOUT : 0;

    switch (bc->state) {
    case WSP_BC_TLS:
        return ev | t->want;
    case WSP_BC_READING:
        return ev | APR_POLLIN;
    default:
        return APR_POLLOUT;
    }
}

/* Plaintext into TLS records, at most WSP_TLS_SEND_MAX a call and only
 * while the socket takes the records. When it leaves some over, the last
 * byte taken stays "owed" (see wsp_bconn_sendv in wsp_backend.h): it is
 * not in *n, and the next call, which starts with it, skips it once the
 * records are out. */
apr_status_t wsp_tls_sendv(wsp_bconn_t *bc, const struct iovec *vec,
                           int nvec, apr_size_t *n)
{
    wsp_tls_t *t = bc->tls;
    apr_bucket_alloc_t *ba = t->bb->bucket_alloc;
    apr_size_t taken = 0, off = 0;
    apr_status_t rv;
    int i = 0;
    /* SSL_write() has encrypted it when ap_pass_brigade() returns; a
     * filter that kept it would copy it (a transient bucket) */
    char wbuf[WSP_TLS_RECORD];

    *n = 0;
    if ((rv = wsp_tls_flush(t)) != APR_SUCCESS) {
        return rv;
    }
    while (i < nvec && vec[i].iov_len == 0) {
        i++;
    }
    if (i == nvec) {
        return APR_SUCCESS;
    }
    if (t->owed) {
        if (*(const char *)vec[i].iov_base != t->owed_byte) {
            return APR_EGENERAL;    /* not the stream we were writing */
        }
        t->owed = 0;
        taken = off = 1;
    }
    while (taken < WSP_TLS_SEND_MAX) {
        apr_size_t len = 0;

        while (i < nvec && len < WSP_TLS_RECORD) {
            apr_size_t k = vec[i].iov_len - off;

            if (k > WSP_TLS_RECORD - len) {
                k = WSP_TLS_RECORD - len;
            }
            memcpy(wbuf + len, (const char *)vec[i].iov_base + off, k);
            len += k;
            off += k;
            if (off == vec[i].iov_len) {
                i++;
                off = 0;
            }
        }
        if (len == 0) {
            break;
        }
        /* one bucket, one SSL_write(), one record */
        APR_BRIGADE_INSERT_TAIL(t->bb, apr_bucket_transient_create(wbuf,
                                len, ba));
        rv = ap_pass_brigade(t->c->output_filters, t->bb);
        apr_brigade_cleanup(t->bb);
        if (rv != APR_SUCCESS) {
            *n = taken;
            return t->werr ? t->werr : rv;
        }
        taken += len;
        if (t->pend_bytes > 0) {
            t->owed = 1;
            t->owed_byte = wbuf[len - 1];
            *n = taken - 1;
            return APR_EAGAIN;
        }
    }
    *n = taken;
    return APR_SUCCESS;
}

/* Decrypted bytes into ibuf until it is full or mod_ssl would block
 * (each read gives at most one record, 8 KB at most). */
apr_status_t wsp_tls_fill(wsp_bconn_t *bc)
{
    wsp_tls_t *t = bc->tls;
    apr_size_t got = 0;
    apr_status_t rv = APR_SUCCESS;

    if (t->pend_bytes > 0) {
        wsp_tls_flush(t);           /* what a read made OpenSSL answer */
    }
    t->drained = 0;
    while (bc->ilen < WSP_IBUF_SIZE && !t->rerr) {
        apr_size_t n = WSP_IBUF_SIZE - bc->ilen;

        rv = ap_get_brigade(t->c->input_filters, t->bb, AP_MODE_READBYTES,
                            APR_NONBLOCK_READ, n);
        if (rv == APR_SUCCESS) {
            rv = apr_brigade_flatten(t->bb, (char *)bc->ibuf + bc->ilen, &n);
        }
        apr_brigade_cleanup(t->bb);
        if (rv == APR_SUCCESS && n == 0) {
            rv = APR_EAGAIN;
        }
        if (APR_STATUS_IS_EAGAIN(rv)) {
            t->drained = 1;
            break;
        }
        if (rv != APR_SUCCESS) {
            t->rerr = (t->eof || APR_STATUS_IS_EOF(rv)) ? APR_EOF : rv;
            break;
        }
        bc->ilen += n;
        got += n;
    }
    if (got > 0) {
        return APR_SUCCESS;
    }
    return t->rerr ? t->rerr : APR_EAGAIN;
}

/* The last fill stopped at a full ibuf: mod_ssl may hold more. */
int wsp_tls_buffers_input(const wsp_bconn_t *bc)
{
    return !bc->tls->drained;
}

/* A close_notify if the socket takes it now; a handshake still waiting
 * is unwound. */
void wsp_tls_close(wsp_bconn_t *bc)
{
    wsp_tls_t *t = bc->tls;

    wsp_co_end(t);
    if (t->established && !t->werr && !t->rerr && !t->eof
        && !t->c->aborted) {
        apr_bucket_alloc_t *ba = t->bb->bucket_alloc;

        APR_BRIGADE_INSERT_TAIL(t->bb, ap_bucket_eoc_create(ba));
        ap_pass_brigade(t->c->output_filters, t->bb);
        apr_brigade_cleanup(t->bb);
        wsp_tls_flush(t);
    }
}
