/* Value parsers shared by the directives and the handshake. APR only. */
#ifndef WSP_PARSE_H
#define WSP_PARSE_H

#include <apr.h>
#include <apr_tables.h>
#include <apr_time.h>

/* "5M", "64K", "1G", "1000": bytes. Returns NULL or an error text. */
const char *wsp_parse_size(const char *arg, apr_off_t *bytes);

/* "10" (seconds), "2s", "250ms", "1m": a time. Returns NULL or an error. */
const char *wsp_parse_time(const char *arg, apr_interval_time_t *t);

/* A message count (DESIGN 7): 1 to 19 decimal digits, nothing else, in
 * s[0..len). Returns 1 with *n set, or 0. */
int wsp_parse_count(const char *s, apr_size_t len, apr_uint64_t *n);

/* A query string (no '?') without its parameters called name; *count
 * says how many there were and *value (NULL: none) is the first one's
 * value, as sent. Returns the rest, NULL when nothing is left. */
const char *wsp_query_take(apr_pool_t *p, const char *args, const char *name,
                           int *count, const char **value);

/* A canonical UUID: 8-4-4-4-12 hex digits, either case. */
int wsp_uuid_valid(const char *s);

/* Whether a comma separated header value lists token (case-insensitive). */
int wsp_header_has_token(const char *value, const char *token);

/* A WSPersistAllowedOrigin value: "*", "null", or an origin as browsers
 * send it: http:// or https://, a host, an optional port, nothing after.
 * Returns NULL or what is wrong. */
const char *wsp_origin_check(const char *origin);

/* Whether a client's Origin (NULL: the client sent none, as non-browser
 * clients do) may connect: allowed NULL (no list), a list holding "*", or
 * one holding the origin (scheme and host compare case-insensitively). */
int wsp_origin_allowed(const apr_array_header_t *allowed,
                       const char *origin);

#endif /* WSP_PARSE_H */
