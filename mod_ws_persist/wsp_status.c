/* The ws_persist section of mod_status's page: every pool's backends as
 * the shared memory holds them (so the server's counts, over all
 * children), and the pipes live in the child that answered.
 *
 * With ?auto (AP_STATUS_SHORT) it writes "key: value" lines after
 * mod_status's own. The names are stable; scripts may rely on them:
 *
 *   WSPersistProcessPid: <pid of the child that answered>
 *   WSPersistProcessPipes: <pipes live in that child>
 *   WSPersistPools: <number of pools>
 *   WSPersistPool[<pool>]: pipes=N free_slots=N backends=N detached=N
 *     resumed=N expired=N
 *   WSPersistBackend[<pool>][<url>]: state=S weight=N pipes=N served=N
 *     failovers=N errors=N consecutive_errors=N bytes_in=N bytes_out=N
 *     added=0|1 removing=0|1 check=none|pass|fail check_at=<seconds
 *     since the epoch, 0 when none>
 *
 * (each pool and each backend on one line). detached counts the sessions
 * whose client connection dropped and that wait for a resume now
 * (WSPersistResumeWindow), resumed those taken up again since the start,
 * expired the detached ones that ended unresumed. <pool> is the location path, <url> the
 * backend as configured or added; in both '%', '[', ']', ':', spaces,
 * control characters and bytes from 0x7f up are written %XX, so a key
 * holds no ':' (parsers split a line at its first ':') and its brackets
 * can be split on. S is one of ok, error, removed, draining, drained,
 * disabled; check is the last WSPersistHealthCheck result. The pool and
 * backend lines are missing when the shared
 * state is (the error log says why). */
#include "apr_strings.h"
#include "apr_lib.h"
#include "http_protocol.h"

#if APR_HAVE_UNISTD_H
#include <unistd.h>
#endif

#include "mod_status.h"

#include "mod_ws_persist.h"
#include "wsp_shared.h"
#include "wsp_status.h"

/* s with the characters that would break a ?auto key as %XX. */
static const char *wsp_status_key(apr_pool_t *p, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    char *out = apr_palloc(p, strlen((const char *)u) * 3 + 1);
    char *o = out;

    for (; *u; ++u) {
        if (*u <= 0x20 || *u >= 0x7f || *u == '%' || *u == '['
            || *u == ']' || *u == ':') {
            *o++ = '%';
            *o++ = hex[*u >> 4];
            *o++ = hex[*u & 15];
        }
        else {
            *o++ = (char)*u;
        }
    }
    *o = '\0';
    return out;
}

static void wsp_status_auto(request_rec *r, apr_array_header_t *pools)
{
    int i, j;

    if (!pools) {
        return;
    }
    ap_rprintf(r, "WSPersistPools: %d\n", pools->nelts);
    for (i = 0; i < pools->nelts; ++i) {
        const wsp_pool_info_t *pi = &APR_ARRAY_IDX(pools, i,
                                                   wsp_pool_info_t);
        const char *name = wsp_status_key(r->pool, pi->name);
        int n = pi->backends ? pi->backends->nelts : 0;

        ap_rprintf(r, "WSPersistPool[%s]: pipes=%d free_slots=%d "
                   "backends=%d detached=%d resumed=%u expired=%u\n", name,
                   pi->pipes, pi->free_slots, n, pi->detached, pi->resumed,
                   pi->expired);
        for (j = 0; j < n; ++j) {
            const wsp_be_info_t *b = &APR_ARRAY_IDX(pi->backends, j,
                                                    wsp_be_info_t);

            ap_rprintf(r, "WSPersistBackend[%s][%s]: state=%s weight=%d "
                       "pipes=%d served=%" APR_UINT64_T_FMT " failovers=%"
                       APR_UINT64_T_FMT " errors=%" APR_UINT64_T_FMT
                       " consecutive_errors=%d bytes_in=%" APR_UINT64_T_FMT
                       " bytes_out=%" APR_UINT64_T_FMT " added=%d "
                       "removing=%d check=%s check_at=%" APR_TIME_T_FMT
                       "\n", name,
                       wsp_status_key(r->pool, b->url),
                       wsp_status_key(r->pool, b->state), b->weight,
                       b->pipes, b->served, b->failovers, b->errors,
                       b->consecutive_errors, b->bytes_in, b->bytes_out,
                       b->added ? 1 : 0, b->removing ? 1 : 0,
                       b->check ? b->check : "none",
                       b->check ? apr_time_sec(b->check_at) : 0);
        }
    }
}

static const char *wsp_h(apr_pool_t *p, const char *s)
{
    return ap_escape_html2(p, s ? s : "", 1);
}

static void wsp_status_html(request_rec *r, apr_array_header_t *pools,
                            int notable)
{
    int i, j;

    for (i = 0; pools && i < pools->nelts; ++i) {
        const wsp_pool_info_t *pi = &APR_ARRAY_IDX(pools, i,
                                                   wsp_pool_info_t);

        ap_rprintf(r, "<h3>Pool %s</h3>\n<p>Live pipes: %d. Sessions "
                   "without their client: %d detached now, %u resumed, "
                   "%u expired. Free slots for backends added at run "
                   "time: %d.</p>\n", wsp_h(r->pool, pi->name), pi->pipes,
                   pi->detached, pi->resumed, pi->expired, pi->free_slots);
        if (!notable) {
            ap_rputs("<table border=\"0\">\n<tr><th>Backend</th>"
                     "<th>State</th><th>Weight</th><th>Pipes</th>"
                     "<th>Served</th><th>Failovers</th><th>Errors</th>"
                     "<th>In a row</th><th>Bytes in</th><th>Bytes out</th>"
                     "<th>Check</th></tr>\n", r);
        }
        for (j = 0; pi->backends && j < pi->backends->nelts; ++j) {
            const wsp_be_info_t *b = &APR_ARRAY_IDX(pi->backends, j,
                                                    wsp_be_info_t);
            const char *state = apr_pstrcat(r->pool,
                                            wsp_h(r->pool, b->state),
                                            b->added ? ", added" : "",
                                            b->removing ? ", removing" : "",
                                            NULL);
            const char *check = wsp_h(r->pool,
                                      wsp_shared_check_text(r->pool, b));

            if (notable) {
                ap_rprintf(r, "<p>%s: %s, weight %d, %d pipes, "
                           "%" APR_UINT64_T_FMT " served, "
                           "%" APR_UINT64_T_FMT " failovers, "
                           "%" APR_UINT64_T_FMT " errors (%d in a row), "
                           "%" APR_UINT64_T_FMT " bytes in, "
                           "%" APR_UINT64_T_FMT " bytes out, "
                           "check %s</p>\n",
                           wsp_h(r->pool, b->url), state, b->weight,
                           b->pipes, b->served, b->failovers, b->errors,
                           b->consecutive_errors, b->bytes_in,
                           b->bytes_out, check);
                continue;
            }
            ap_rprintf(r, "<tr><td>%s</td><td>%s</td><td>%d</td><td>%d</td>"
                       "<td>%" APR_UINT64_T_FMT "</td>"
                       "<td>%" APR_UINT64_T_FMT "</td>"
                       "<td>%" APR_UINT64_T_FMT "</td><td>%d</td>"
                       "<td>%" APR_UINT64_T_FMT "</td>"
                       "<td>%" APR_UINT64_T_FMT "</td><td>%s</td></tr>\n",
                       wsp_h(r->pool, b->url), state, b->weight, b->pipes,
                       b->served, b->failovers, b->errors,
                       b->consecutive_errors, b->bytes_in, b->bytes_out,
                       check);
        }
        if (!notable) {
            ap_rputs("</table>\n", r);
        }
    }
}

int wsp_status_hook(request_rec *r, int flags)
{
    /* pipes are counted per backend in shared memory, but this child's
     * own count is only its own: say whose it is */
    apr_array_header_t *pools = wsp_shared_snapshot(r->pool);
    pid_t pid = getpid();
    int mine = wsp_shared_process_pipes();

    if (flags & AP_STATUS_SHORT) {
        ap_rprintf(r, "WSPersistProcessPid: %" APR_PID_T_FMT "\n"
                   "WSPersistProcessPipes: %d\n", pid, mine);
        wsp_status_auto(r, pools);
        return OK;
    }
    ap_rprintf(r, "<hr />\n<h2>ws_persist</h2>\n<p>Live pipes in the child "
               "that answered this request (pid %" APR_PID_T_FMT "): %d. "
               "The counts below are the server's, over all children.</p>\n",
               pid, mine);
    if (!pools) {
        ap_rputs("<p>The shared backend state is missing: see the error "
                 "log.</p>\n", r);
    }
    wsp_status_html(r, pools, flags & AP_STATUS_NOTABLE);
    return OK;
}
