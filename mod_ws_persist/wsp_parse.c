/* Value parsers shared by the directives and the handshake. APR only. */
#include <apr_lib.h>
#include <apr_strings.h>
#include <apr_cstr.h>

#include "wsp_parse.h"

#define WSP_OFF_MAX ((APR_UINT64_C(1) << (sizeof(apr_off_t) * 8 - 1)) - 1)
#define WSP_TIME_MAX ((apr_uint64_t)APR_INT64_MAX)

/* The texts do not repeat the value: they take no pool, and the directive
 * handlers quote the value and the directive name around them. */
#define WSP_NOT_SIZE "not a size (bytes, or a number with suffix K, M or G)"
#define WSP_NOT_TIME "not a time (seconds, or a number with suffix ms, s, " \
                     "m or h)"
#define WSP_TOO_LARGE "too large"
#define WSP_NEGATIVE "negative"

#define WSP_DIGITS_OK    0
#define WSP_DIGITS_NONE  1
#define WSP_DIGITS_BIG   2

/* The leading decimal digits of s into *n, at most max; *end is the first
 * byte after them. */
static int wsp_parse_digits(const char *s, apr_uint64_t max,
                            apr_uint64_t *n, const char **end)
{
    apr_uint64_t v = 0;

    if (!apr_isdigit(*s)) {
        return WSP_DIGITS_NONE;
    }
    for (; apr_isdigit(*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10) {
            return WSP_DIGITS_BIG;
        }
        v = v * 10 + d;
    }
    *n = v;
    *end = s;
    return WSP_DIGITS_OK;
}

const char *wsp_parse_size(const char *arg, apr_off_t *bytes)
{
    apr_uint64_t n, mult = 1;
    const char *s;
    int rv;

    if (!arg || !*arg) {
        return "empty";
    }
    rv = wsp_parse_digits(arg, WSP_OFF_MAX, &n, &s);
    if (rv != WSP_DIGITS_OK) {
        return rv == WSP_DIGITS_BIG ? WSP_TOO_LARGE
               : *arg == '-' ? WSP_NEGATIVE : WSP_NOT_SIZE;
    }
    switch (apr_tolower(*s)) {
    case 'k': mult = APR_UINT64_C(1) << 10; s++; break;
    case 'm': mult = APR_UINT64_C(1) << 20; s++; break;
    case 'g': mult = APR_UINT64_C(1) << 30; s++; break;
    }
    if (apr_tolower(*s) == 'b') {
        s++;
    }
    if (*s) {
        return WSP_NOT_SIZE;
    }
    if (n > WSP_OFF_MAX / mult) {
        return WSP_TOO_LARGE;
    }
    *bytes = (apr_off_t)(n * mult);
    return NULL;
}

const char *wsp_parse_time(const char *arg, apr_interval_time_t *t)
{
    static const struct {
        const char *suffix;
        apr_uint64_t usec;
    } units[] = {
        { "",    APR_USEC_PER_SEC },
        { "ms",  1000 },
        { "s",   APR_USEC_PER_SEC },
        { "m",   APR_USEC_PER_SEC * 60 },
        { "min", APR_USEC_PER_SEC * 60 },
        { "h",   APR_USEC_PER_SEC * 3600 },
    };
    apr_uint64_t n;
    const char *s;
    apr_size_t i;
    int rv;

    if (!arg || !*arg) {
        return "empty";
    }
    rv = wsp_parse_digits(arg, WSP_TIME_MAX, &n, &s);
    if (rv != WSP_DIGITS_OK) {
        return rv == WSP_DIGITS_BIG ? WSP_TOO_LARGE
               : *arg == '-' ? WSP_NEGATIVE : WSP_NOT_TIME;
    }
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (!apr_cstr_casecmp(s, units[i].suffix)) {
            if (n > WSP_TIME_MAX / units[i].usec) {
                return WSP_TOO_LARGE;
            }
            *t = (apr_interval_time_t)(n * units[i].usec);
            return NULL;
        }
    }
    return WSP_NOT_TIME;
}

int wsp_uuid_valid(const char *s)
{
    int i;

    if (!s) {
        return 0;
    }
    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return 0;
            }
        }
        else if (!apr_isxdigit(s[i])) {
            return 0;
        }
    }
    return s[36] == '\0';
}

int wsp_header_has_token(const char *value, const char *token)
{
    apr_size_t tlen;

    if (!value || !token || !(tlen = strlen(token))) {
        return 0;
    }
    while (*value) {
        const char *end;
        apr_size_t n;

        while (*value == ' ' || *value == '\t') {
            value++;
        }
        end = strchr(value, ',');
        n = end ? (apr_size_t)(end - value) : strlen(value);
        while (n && (value[n - 1] == ' ' || value[n - 1] == '\t')) {
            n--;
        }
        if (n == tlen && !apr_cstr_casecmpn(value, token, n)) {
            return 1;
        }
        if (!end) {
            break;
        }
        value = end + 1;
    }
    return 0;
}

const char *wsp_origin_check(const char *origin)
{
    const char *s;
    apr_uint64_t port;

    if (!strcmp(origin, "*") || !strcmp(origin, "null")) {
        return NULL;
    }
    if (!apr_cstr_casecmpn(origin, "https://", 8)) {
        s = origin + 8;
    }
    else if (!apr_cstr_casecmpn(origin, "http://", 7)) {
        s = origin + 7;
    }
    else {
        return "not an origin (http://host[:port] or https://host[:port], "
               "\"null\" or \"*\")";
    }
    if (*s == '[') {
        for (s++; apr_isxdigit(*s) || *s == ':' || *s == '.'; s++) {
        }
        if (*s++ != ']') {
            return "bad IPv6 address";
        }
    }
    else {
        const char *h = s;

        while (apr_isalnum(*s) || *s == '-' || *s == '.') {
            s++;
        }
        if (s == h) {
            return "no host";
        }
    }
    if (*s == ':') {
        if (wsp_parse_digits(s + 1, 65535, &port, &s) != WSP_DIGITS_OK
            || port == 0) {
            return "bad port";
        }
    }
    if (*s) {
        return "an origin has no path, query or trailing slash";
    }
    return NULL;
}

int wsp_origin_allowed(const apr_array_header_t *allowed,
                       const char *origin)
{
    int i;

    if (!allowed || !origin) {
        return 1;
    }
    for (i = 0; i < allowed->nelts; i++) {
        const char *a = APR_ARRAY_IDX(allowed, i, const char *);

        if (!strcmp(a, "*") || !apr_cstr_casecmp(a, origin)) {
            return 1;
        }
    }
    return 0;
}

int wsp_parse_count(const char *s, apr_size_t len, apr_uint64_t *n)
{
    apr_uint64_t v = 0;
    apr_size_t i;

    if (len == 0 || len > 19) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        if (!apr_isdigit(s[i])) {
            return 0;
        }
        v = v * 10 + (apr_uint64_t)(s[i] - '0');
    }
    *n = v;
    return 1;
}

const char *wsp_query_take(apr_pool_t *p, const char *args, const char *name,
                           int *count, const char **value)
{
    apr_size_t nlen = strlen(name);
    char *out, *o;
    const char *a = args;

    *count = 0;
    *value = NULL;
    if (!args) {
        return NULL;
    }
    o = out = apr_palloc(p, strlen(args) + 1);
    while (*a) {
        const char *end = strchr(a, '&');
        apr_size_t len = end ? (apr_size_t)(end - a) : strlen(a);

        if (len >= nlen && !strncmp(a, name, nlen)
            && (len == nlen || a[nlen] == '=')) {
            if (!(*count)++) {
                *value = apr_pstrmemdup(p, a + nlen + (len > nlen),
                                        len - nlen - (len > nlen));
            }
        }
        else if (len > 0) {
            if (o > out) {
                *o++ = '&';
            }
            memcpy(o, a, len);
            o += len;
        }
        a += len + (end != NULL);
    }
    *o = '\0';
    return o > out ? out : NULL;
}
