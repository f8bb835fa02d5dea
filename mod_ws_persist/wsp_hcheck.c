/* Active health checks: the directive's arguments, the status line of a
 * GET check's answer, and what a result does to a backend. APR only; see
 * include/wsp_hcheck.h. The checks themselves run in wsp_checker.c. */
#include <apr_lib.h>
#include <apr_strings.h>
#include <apr_cstr.h>

#include "wsp_hcheck.h"
#include "wsp_parse.h"

const char *wsp_hcheck_kind_name(wsp_hc_kind_e kind)
{
    switch (kind) {
    case WSP_HC_WS:
        return "ws";
    case WSP_HC_GET:
        return "get";
    default:
        return "tcp";
    }
}

/* "ws:/path" or "get:/path": the path goes into a request line as it
 * is, so it must start with '/' and hold no space or control byte. */
static const char *wsp_hcheck_path(apr_pool_t *p, const char *word,
                                   const char *path, wsp_hcheck_t *hc)
{
    const char *c;

    if (*path != '/') {
        return apr_psprintf(p, "'%s': the path must start with '/'", word);
    }
    for (c = path; *c; ++c) {
        if (apr_iscntrl(*c) || *c == ' ' || *c == '#') {
            return apr_psprintf(p, "'%s': space, '#' or control character "
                                "in the path", word);
        }
    }
    hc->path = apr_pstrdup(p, path);
    return NULL;
}

static const char *wsp_hcheck_kind(apr_pool_t *p, const char *word,
                                   wsp_hcheck_t *hc)
{
    if (!apr_cstr_casecmp(word, "tcp")) {
        hc->kind = WSP_HC_TCP;
        hc->path = NULL;
        return NULL;
    }
    if (!apr_cstr_casecmpn(word, "ws:", 3)) {
        hc->kind = WSP_HC_WS;
        return wsp_hcheck_path(p, word, word + 3, hc);
    }
    if (!apr_cstr_casecmpn(word, "get:", 4)) {
        hc->kind = WSP_HC_GET;
        return wsp_hcheck_path(p, word, word + 4, hc);
    }
    return apr_psprintf(p, "'%s': expected tcp, ws:/PATH or get:/PATH",
                        word);
}

static const char *wsp_hcheck_count(apr_pool_t *p, const char *word,
                                    const char *val, int *out)
{
    apr_int64_t v;
    char *end;

    v = *val ? apr_strtoi64(val, &end, 10) : 0;
    if (!*val || *end || v < 1 || v > WSP_HC_MAX_COUNT) {
        return apr_psprintf(p, "'%s': expected a whole number from 1 to %d",
                            word, WSP_HC_MAX_COUNT);
    }
    *out = (int)v;
    return NULL;
}

static const char *wsp_hcheck_option(apr_pool_t *p, const char *word,
                                     wsp_hcheck_t *hc, int *timeout_set)
{
    const char *eq = strchr(word, '='), *val, *err;
    apr_size_t klen;

    if (!eq) {
        return apr_psprintf(p, "'%s': expected interval=TIME, timeout=TIME, "
                            "fails=N or passes=N", word);
    }
    klen = (apr_size_t)(eq - word);
    val = eq + 1;
    if (klen == 8 && !apr_cstr_casecmpn(word, "interval", 8)) {
        if ((err = wsp_parse_time(val, &hc->interval))) {
            return apr_psprintf(p, "'%s': %s", word, err);
        }
        return NULL;
    }
    if (klen == 7 && !apr_cstr_casecmpn(word, "timeout", 7)) {
        *timeout_set = 1;
        if ((err = wsp_parse_time(val, &hc->timeout))) {
            return apr_psprintf(p, "'%s': %s", word, err);
        }
        return NULL;
    }
    if (klen == 5 && !apr_cstr_casecmpn(word, "fails", 5)) {
        return wsp_hcheck_count(p, word, val, &hc->fails);
    }
    if (klen == 6 && !apr_cstr_casecmpn(word, "passes", 6)) {
        return wsp_hcheck_count(p, word, val, &hc->passes);
    }
    return apr_psprintf(p, "'%s': expected interval=TIME, timeout=TIME, "
                        "fails=N or passes=N", word);
}

const char *wsp_hcheck_parse(apr_pool_t *p, const char *args,
                             wsp_hcheck_t *hc)
{
    char **argv;
    const char *err;
    int i, timeout_set = 0;

    memset(hc, 0, sizeof(*hc));
    hc->interval = WSP_HC_DEFAULT_INTERVAL;
    hc->timeout = WSP_HC_DEFAULT_TIMEOUT;
    hc->fails = 1;
    hc->passes = 1;
    if (apr_tokenize_to_argv(args ? args : "", &argv, p) != APR_SUCCESS
        || !argv[0]) {
        return "expected tcp, ws:/PATH or get:/PATH";
    }
    if ((err = wsp_hcheck_kind(p, argv[0], hc))) {
        return err;
    }
    for (i = 1; argv[i]; ++i) {
        if ((err = wsp_hcheck_option(p, argv[i], hc, &timeout_set))) {
            return err;
        }
    }
    if (hc->interval < WSP_HC_MIN_INTERVAL) {
        return "the interval must be at least 100ms";
    }
    if (!timeout_set && hc->timeout > hc->interval) {
        hc->timeout = hc->interval;   /* the default fits a short interval */
    }
    if (hc->timeout <= 0) {
        return "the timeout must be more than 0";
    }
    /* one check per backend at a time: a check never outlives its
     * interval, so a backend costs at most one connection per interval */
    if (hc->timeout > hc->interval) {
        return "the timeout must not be longer than the interval";
    }
    return NULL;
}

int wsp_hcheck_status(const char *buf, apr_size_t len, int *status,
                      const char **why)
{
    const char *eol = memchr(buf, '\n', len > WSP_HC_HEAD_MAX
                                        ? WSP_HC_HEAD_MAX : len);
    apr_size_t n;

    if (!eol) {
        if (len >= WSP_HC_HEAD_MAX) {
            *why = "no status line in the first 4 KB of the answer";
            return WSP_HS_FAIL;
        }
        /* what is there must still be able to become "HTTP/1.x " */
        n = len < 5 ? len : 5;
        if (memcmp(buf, "HTTP/", n)) {
            *why = "not an HTTP answer";
            return WSP_HS_FAIL;
        }
        return WSP_HS_MORE;
    }
    n = (apr_size_t)(eol - buf);
    if (n < 12 || memcmp(buf, "HTTP/1.", 7) || !apr_isdigit(buf[7])
        || buf[8] != ' ' || !apr_isdigit(buf[9]) || !apr_isdigit(buf[10])
        || !apr_isdigit(buf[11]) || (n > 12 && buf[12] != ' '
                                     && buf[12] != '\r')) {
        *why = "bad status line";
        return WSP_HS_FAIL;
    }
    *status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    return WSP_HS_OK;
}

static void wsp_hcheck_why(wsp_be_shared_t *st, const char *why)
{
    apr_cpystrn(st->hc_why, why ? why : "", sizeof(st->hc_why));
}

int wsp_hcheck_record(wsp_be_shared_t *st, const wsp_hcheck_t *hc, int pass,
                      const char *why, apr_time_t now)
{
    int fails = hc ? hc->fails : 1, passes = hc ? hc->passes : 1;

    st->hc_at = now;
    if (!pass) {
        st->hc_result = WSP_HCR_FAIL;
        wsp_hcheck_why(st, why);
        st->hc_passes = 0;
        if (st->hc_fails < WSP_HC_MAX_COUNT) {
            st->hc_fails++;
        }
        if (st->hc_down || st->hc_fails < fails) {
            return WSP_HC_SAME;
        }
        st->hc_down = 1;
        if (st->state == WSP_BE_OK) {
            st->state = WSP_BE_ERROR;
        }
        return WSP_HC_DOWN;
    }
    st->hc_result = WSP_HCR_PASS;
    wsp_hcheck_why(st, NULL);
    st->hc_fails = 0;
    if (st->hc_passes < WSP_HC_MAX_COUNT) {
        st->hc_passes++;
    }
    if (st->hc_down) {
        if (st->hc_passes < passes) {
            return WSP_HC_SAME;
        }
        st->hc_down = 0;
    }
    else if (st->state != WSP_BE_ERROR) {
        return WSP_HC_SAME;
    }
    if (st->state == WSP_BE_REMOVED) {
        return WSP_HC_SAME;           /* out until re-enabled */
    }
    /* errors in a row are kept: a backend that passes its check but
     * keeps failing clients still reaches max_errors */
    st->state = WSP_BE_OK;
    st->retry_at = 0;
    st->retry_delay = 0;
    return WSP_HC_UP;
}
