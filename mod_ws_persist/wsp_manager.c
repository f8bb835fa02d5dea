/* The ws-persist-manager handler. GET shows every pool's backends, as an
 * HTML page with forms or, for a client whose Accept names
 * application/json, as JSON. POST applies an administrator's action
 * through wsp_shared_manage(), in shared memory, so that every child
 * sees it at once.
 *
 * Every request must name this server in its Host (ServerName,
 * ServerAlias or the address it arrived on), else 421: a page of another
 * site whose name an attacker points at this address (DNS rebinding)
 * passes `Require ip 127.0.0.1` and is its own origin to the browser, so
 * only the name it was sent to gives it away. A POST also needs the nonce
 * of the running generation (on the page and in the JSON) and no Referer
 * or Origin naming anything but this server: a form on another site
 * cannot act through an administrator's browser. No answer may be framed
 * by another page. Who may use the handler at all is the configuration's
 * Require. */
#include "apr_strings.h"
#include "apr_lib.h"
#include "apr_uri.h"
#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_script.h"

#include "mod_ws_persist.h"
#include "wsp_manager.h"
#include "wsp_shared.h"

/* The largest form accepted: a WSP_URL_MAX URL fully %-escaped fits. */
#define WSP_MANAGER_BODY_MAX 8192

/* ---------------------------------------------------------------- JSON */

/* Length of the valid UTF-8 sequence at u (2 to 4 bytes), 0 if there is
 * none: overlong forms, surrogates and code points past U+10FFFF count
 * as invalid. */
static apr_size_t wsp_utf8_len(const unsigned char *u)
{
    apr_size_t len, i;
    apr_uint32_t cp;

    if (u[0] >= 0xc2 && u[0] <= 0xdf) {
        len = 2;
        cp = u[0] & 0x1f;
    }
    else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        len = 3;
        cp = u[0] & 0x0f;
    }
    else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
        len = 4;
        cp = u[0] & 0x07;
    }
    else {
        return 0;
    }
    for (i = 1; i < len; ++i) {
        if ((u[i] & 0xc0) != 0x80) {     /* also stops at the NUL */
            return 0;
        }
        cp = (cp << 6) | (u[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
        || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

/* s as a JSON string, quotes included. Location paths and URLs come from
 * the configuration or a form and may hold quotes, backslashes, control
 * characters or bytes that are not UTF-8; the last are taken as Latin-1
 * so that the document stays valid JSON whatever they hold. */
static const char *wsp_json_str(apr_pool_t *p, const char *s)
{
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    char *out = apr_palloc(p, strlen((const char *)u) * 6 + 3);
    char *o = out;

    *o++ = '"';
    while (*u) {
        apr_size_t len;

        if (*u == '"' || *u == '\\') {
            *o++ = '\\';
            *o++ = (char)*u++;
        }
        else if (*u == '\n') {
            *o++ = '\\';
            *o++ = 'n';
            u++;
        }
        else if (*u == '\r') {
            *o++ = '\\';
            *o++ = 'r';
            u++;
        }
        else if (*u == '\t') {
            *o++ = '\\';
            *o++ = 't';
            u++;
        }
        else if (*u < 0x20 || *u == 0x7f) {
            o += apr_snprintf(o, 7, "\\u%04x", *u++);
        }
        else if (*u < 0x80) {
            *o++ = (char)*u++;
        }
        else if ((len = wsp_utf8_len(u)) > 0) {
            memcpy(o, u, len);
            o += len;
            u += len;
        }
        else {
            o += apr_snprintf(o, 7, "\\u%04x", *u++);
        }
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

/* The last health check: null, or its result, why it failed and when it
 * ended (seconds since the epoch). */
static const char *wsp_json_check(apr_pool_t *p, const wsp_be_info_t *b)
{
    if (!b->check) {
        return "null";
    }
    return apr_psprintf(p, "{\"result\": %s, \"reason\": %s, \"at\": %"
                        APR_TIME_T_FMT ".%03d}", wsp_json_str(p, b->check),
                        wsp_json_str(p, b->check_why),
                        apr_time_sec(b->check_at),
                        (int)(apr_time_msec(b->check_at) % 1000));
}

/* The state document: the nonce and every pool with its backends. The
 * GET answer and the answer to an applied action. */
static void wsp_manager_json(request_rec *r)
{
    apr_array_header_t *pools = wsp_shared_snapshot(r->pool);
    const char *nonce = wsp_shared_nonce();
    int i, j;

    ap_rvputs(r, "{\"nonce\": ",
              nonce ? wsp_json_str(r->pool, nonce) : "null",
              ", \"pools\": [", NULL);
    for (i = 0; pools && i < pools->nelts; ++i) {
        const wsp_pool_info_t *pi = &APR_ARRAY_IDX(pools, i,
                                                   wsp_pool_info_t);

        ap_rprintf(r, "%s\n  {\"name\": %s, \"pipes\": %d, "
                   "\"free_slots\": %d, \"detached\": %d, "
                   "\"resumed\": %u, \"expired\": %u, \"backends\": [",
                   i ? "," : "", wsp_json_str(r->pool, pi->name), pi->pipes,
                   pi->free_slots, pi->detached, pi->resumed, pi->expired);
        for (j = 0; pi->backends && j < pi->backends->nelts; ++j) {
            const wsp_be_info_t *b = &APR_ARRAY_IDX(pi->backends, j,
                                                    wsp_be_info_t);

            ap_rprintf(r, "%s\n    {\"url\": %s, \"state\": %s, "
                       "\"weight\": %d, \"pipes\": %d, "
                       "\"errors\": %" APR_UINT64_T_FMT ", "
                       "\"consecutive_errors\": %d, "
                       "\"served\": %" APR_UINT64_T_FMT ", "
                       "\"failovers\": %" APR_UINT64_T_FMT ", "
                       "\"bytes_in\": %" APR_UINT64_T_FMT ", "
                       "\"bytes_out\": %" APR_UINT64_T_FMT ", "
                       "\"added\": %s, \"removing\": %s, "
                       "\"check\": %s}",
                       j ? "," : "", wsp_json_str(r->pool, b->url),
                       wsp_json_str(r->pool, b->state), b->weight, b->pipes,
                       b->errors, b->consecutive_errors, b->served,
                       b->failovers, b->bytes_in, b->bytes_out,
                       b->added ? "true" : "false",
                       b->removing ? "true" : "false",
                       wsp_json_check(r->pool, b));
        }
        ap_rputs(pi->backends && pi->backends->nelts ? "\n  ]}" : "]}", r);
    }
    ap_rputs(pools && pools->nelts ? "\n]}\n" : "]}\n", r);
}

/* ---------------------------------------------------------------- HTML */

/* What the page says above the tables and how it reloads itself. */
typedef struct {
    const char *line;           /* what was done or refused, HTML */
    int refused;
    int refresh;                /* seconds between reloads, 0: none */
} wsp_page_t;

/* The longest auto-refresh period the page accepts, in seconds. */
#define WSP_REFRESH_MAX 3600
#define WSP_REFRESH_DEFAULT 5

static const char *const wsp_actions[] = {
    "drain", "disable", "enable", "remove", NULL
};

static const char *wsp_h(apr_pool_t *p, const char *s)
{
    return ap_escape_html2(p, s ? s : "", 1);
}

/* refresh=N from a query or a form: N when it is a whole number of
 * seconds the page may reload at, else 0. */
static int wsp_refresh_of(const char *v)
{
    char *end;
    long n;

    if (!v || !apr_isdigit(*v)) {
        return 0;
    }
    n = strtol(v, &end, 10);
    return *end || n < 1 || n > WSP_REFRESH_MAX ? 0 : (int)n;
}

/* Whether a row offers action: only those that change the backend's
 * state, so that a click always means something. */
static int wsp_action_offered(const wsp_be_info_t *b, const char *action)
{
    const char *s = b->state ? b->state : "";
    int admin = !strcmp(s, "draining") || !strcmp(s, "drained")
                || !strcmp(s, "disabled");

    if (!strcmp(action, "enable")) {
        return admin || b->removing || !strcmp(s, "removed");
    }
    if (b->removing) {
        return 0;               /* on its way out: only enable undoes it */
    }
    if (!strcmp(action, "remove")) {
        return 1;
    }
    if (!strcmp(action, "drain")) {
        return strcmp(s, "draining") && strcmp(s, "drained")
               && strcmp(s, "removed");
    }
    if (!strcmp(action, "disable")) {
        return !admin && strcmp(s, "removed");
    }
    return 0;
}

/* The hidden fields every form carries: then=page asks for the page
 * back (a redirect to it) instead of JSON. */
static void wsp_form_start(request_rec *r, const char *action_uri,
                           const char *pool, const char *nonce,
                           const wsp_page_t *pg)
{
    ap_rvputs(r, "<form method=\"post\" action=\"", action_uri, "\">"
              "<input type=\"hidden\" name=\"pool\" value=\"",
              wsp_h(r->pool, pool), "\">"
              "<input type=\"hidden\" name=\"nonce\" value=\"",
              wsp_h(r->pool, nonce), "\">"
              "<input type=\"hidden\" name=\"then\" value=\"page\">", NULL);
    if (pg->refresh) {
        ap_rprintf(r, "<input type=\"hidden\" name=\"refresh\" "
                   "value=\"%d\">", pg->refresh);
    }
}

/* The state cell: the word, and a class the style colours by state. */
static void wsp_state_cell(request_rec *r, const wsp_be_info_t *b)
{
    const char *s = wsp_h(r->pool, b->state);

    ap_rvputs(r, "<td class=\"state state-", s,
              b->removing ? " removing" : "", "\">", s,
              b->removing ? " (removing)" : "", "</td>", NULL);
}

/* The actions cell: one form, one button per action the state allows
 * (the clicked button's name and value are what the form submits);
 * remove asks first. */
static void wsp_actions_cell(request_rec *r, const char *self,
                             const wsp_pool_info_t *pi,
                             const wsp_be_info_t *b, const char *nonce,
                             const wsp_page_t *pg)
{
    int k;

    ap_rputs("<td class=\"actions\">", r);
    wsp_form_start(r, self, pi->name, nonce, pg);
    ap_rvputs(r, "<input type=\"hidden\" name=\"backend\" value=\"",
              wsp_h(r->pool, b->url), "\">", NULL);
    for (k = 0; wsp_actions[k]; ++k) {
        if (!wsp_action_offered(b, wsp_actions[k])) {
            continue;
        }
        ap_rvputs(r, "<button type=\"submit\" name=\"action\" value=\"",
                  wsp_actions[k], "\"", NULL);
        if (!strcmp(wsp_actions[k], "remove")) {
            ap_rvputs(r, " data-confirm=\"Remove ",
                      wsp_h(r->pool, b->url), " from pool ",
                      wsp_h(r->pool, pi->name), "?\"", NULL);
        }
        ap_rvputs(r, ">", wsp_actions[k], "</button>", NULL);
    }
    ap_rputs("</form></td>", r);
}

/* Colours by state; the word is always there too. The script asks
 * before a button with data-confirm submits. */
static const char wsp_page_head[] =
    "<style>\n"
    "body{font-family:sans-serif;margin:1em 2em}\n"
    "table{border-collapse:collapse}\n"
    "td,th{border:1px solid #999;padding:.2em .5em}\n"
    "th{background:#ddd}\n"
    ".state{font-weight:bold}\n"
    ".actions{white-space:nowrap}\n"
    "form{margin:.3em 0}\n"
    ".state-ok{background:#c8f0c8;color:#064}\n"
    ".state-error{background:#f7c6c6;color:#900}\n"
    ".state-removed{background:#999;color:#fff}\n"
    ".state-draining{background:#fde2a8;color:#840}\n"
    ".state-drained{background:#c6d8f7;color:#036}\n"
    ".state-disabled{background:#e4e4e4;color:#555}\n"
    ".removing{text-decoration:line-through}\n"
    ".done{background:#c8f0c8;padding:.4em;border:1px solid #064}\n"
    ".refused{background:#f7c6c6;padding:.4em;border:1px solid #900}\n"
    "</style>\n";

static const char wsp_page_script[] =
    "<script>\n"
    "document.addEventListener('submit', function (e) {\n"
    "  var b = e.submitter;\n"
    "  if (b && b.dataset.confirm && !confirm(b.dataset.confirm)) {\n"
    "    e.preventDefault();\n"
    "  }\n"
    "});\n"
    "</script>\n";

static void wsp_manager_html(request_rec *r, const wsp_page_t *pg)
{
    apr_array_header_t *pools = wsp_shared_snapshot(r->pool);
    const char *nonce = wsp_shared_nonce();
    const char *self = wsp_h(r->pool, ap_escape_uri(r->pool, r->uri));
    int i, j;

    ap_rputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">", r);
    if (pg->refresh) {
        ap_rprintf(r, "<meta http-equiv=\"refresh\" content=\"%d; "
                   "url=%s?refresh=%d\">", pg->refresh, self, pg->refresh);
    }
    ap_rputs("<title>ws_persist backends</title>\n", r);
    ap_rputs(wsp_page_head, r);
    ap_rputs("</head><body>\n<h1>ws_persist backends</h1>\n", r);
    if (pg->line) {
        ap_rvputs(r, "<p id=\"result\" class=\"",
                  pg->refused ? "refused" : "done", "\">", pg->line,
                  "</p>\n", NULL);
    }
    if (pg->refresh) {
        ap_rprintf(r, "<p id=\"refresh\">Reloading every %d s. "
                   "<a href=\"%s\">Stop</a></p>\n", pg->refresh, self);
    }
    else {
        ap_rprintf(r, "<p id=\"refresh\"><a href=\"%s?refresh=%d\">"
                   "Reload every %d s</a></p>\n", self,
                   WSP_REFRESH_DEFAULT, WSP_REFRESH_DEFAULT);
    }
    ap_rputs("<p>Counts are the server's, over all its children. "
             "<i>drain</i> moves a backend's pipes to other backends and "
             "takes no new ones; <i>disable</i> takes no new pipes and "
             "keeps the ones it has; <i>remove</i> drains, then forgets "
             "the backend; <i>enable</i> undoes all three.</p>\n", r);
    if (!pools) {
        ap_rputs("<p>The shared backend state is missing: see the error "
                 "log.</p>\n", r);
    }
    for (i = 0; pools && i < pools->nelts; ++i) {
        const wsp_pool_info_t *pi = &APR_ARRAY_IDX(pools, i,
                                                   wsp_pool_info_t);

        ap_rvputs(r, "<h2>Pool ", wsp_h(r->pool, pi->name), "</h2>\n",
                  NULL);
        ap_rprintf(r, "<p class=\"pool\">Live pipes: %d. Sessions "
                   "without their client: %d detached now, %u resumed, "
                   "%u expired. Free slots for backends added at run "
                   "time: %d.</p>\n", pi->pipes, pi->detached, pi->resumed,
                   pi->expired, pi->free_slots);
        ap_rputs("<table>\n<tr><th>backend</th><th>state</th>"
                 "<th>weight</th><th>pipes</th><th>served</th>"
                 "<th>failovers</th><th>errors</th><th>errors in a row</th>"
                 "<th>bytes in</th><th>bytes out</th><th>added</th>"
                 "<th>check</th><th>actions</th></tr>\n", r);
        for (j = 0; pi->backends && j < pi->backends->nelts; ++j) {
            const wsp_be_info_t *b = &APR_ARRAY_IDX(pi->backends, j,
                                                    wsp_be_info_t);

            ap_rvputs(r, "<tr><td>", wsp_h(r->pool, b->url), "</td>",
                      NULL);
            wsp_state_cell(r, b);
            ap_rprintf(r, "<td>%d</td><td>%d</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%d</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%s</td>", b->weight, b->pipes,
                       b->served, b->failovers, b->errors,
                       b->consecutive_errors, b->bytes_in, b->bytes_out,
                       b->added ? "yes" : "no");
            ap_rvputs(r, "<td class=\"check\">",
                      wsp_h(r->pool, wsp_shared_check_text(r->pool, b)),
                      "</td>", NULL);
            wsp_actions_cell(r, self, pi, b, nonce, pg);
            ap_rputs("</tr>\n", r);
        }
        ap_rputs("</table>\n", r);
        wsp_form_start(r, self, pi->name, nonce, pg);
        ap_rputs("<input type=\"hidden\" name=\"action\" value=\"add\">"
                 "<label>backend <input type=\"text\" name=\"backend\" "
                 "size=\"50\" placeholder=\"ws://host:port/path/\">"
                 "</label> <button type=\"submit\">add</button></form>\n",
                 r);
    }
    ap_rputs(wsp_page_script, r);
    ap_rputs("</body></html>\n", r);
}

/* The line a redirect after an action asks the page for
 * (?done=ACTION&pool=P&backend=URL): only a known action, and every
 * value as text, so that a crafted link can put no markup on the page. */
static const char *wsp_done_line(request_rec *r, apr_table_t *q)
{
    const char *action = apr_table_get(q, "done");
    const char *pool = apr_table_get(q, "pool");
    const char *url = apr_table_get(q, "backend");
    int k;

    for (k = 0; wsp_actions[k] && action; ++k) {
        if (!strcmp(action, wsp_actions[k])) {
            break;
        }
    }
    if (!action || (!wsp_actions[k] && strcmp(action, "add"))
        || !pool || !url) {
        return NULL;
    }
    return apr_pstrcat(r->pool, "Done: ", action, " ",
                       wsp_h(r->pool, url), " in pool ",
                       wsp_h(r->pool, pool), ".", NULL);
}

/* ----------------------------------------------------------------- GET */

/* Whether a parameter list (after a media range's ';') holds q=0. */
static int wsp_q_zero(const char *params)
{
    const char *q = params;

    while ((q = ap_strcasestr(q, "q=")) != NULL) {
        if (q == params || q[-1] == ';' || apr_isspace(q[-1])) {
            q += 2;
            if (*q++ != '0') {
                return 0;
            }
            if (*q == '.') {
                while (*++q == '0') {
                }
            }
            while (apr_isspace(*q)) {
                q++;
            }
            return !*q || *q == ';';
        }
        q += 2;
    }
    return 0;
}

/* Whether the Accept header names application/json, with q above 0.
 * A browser's wildcards do not count: it gets the page. */
static int wsp_wants_json(request_rec *r)
{
    const char *accept = apr_table_get(r->headers_in, "Accept");
    char *list, *range, *last;

    if (!accept) {
        return 0;
    }
    list = apr_pstrdup(r->pool, accept);
    for (range = apr_strtok(list, ",", &last); range;
         range = apr_strtok(NULL, ",", &last)) {
        char *params = strchr(range, ';');
        char *end;

        if (params) {
            *params++ = '\0';
        }
        while (apr_isspace(*range)) {
            range++;
        }
        end = range + strlen(range);
        while (end > range && apr_isspace(end[-1])) {
            *--end = '\0';
        }
        if (!ap_cstr_casecmp(range, "application/json")) {
            return !params || !wsp_q_zero(params);
        }
    }
    return 0;
}

static int wsp_manager_get(request_rec *r)
{
    int rc;

    if ((rc = ap_discard_request_body(r)) != OK) {
        return rc;
    }
    /* the page carries the nonce: no cache may keep it */
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (wsp_wants_json(r)) {
        ap_set_content_type(r, "application/json");
        if (!r->header_only) {
            wsp_manager_json(r);
        }
    }
    else {
        wsp_page_t pg = { NULL, 0, 0 };
        apr_table_t *q = NULL;

        ap_args_to_table(r, &q);
        pg.line = wsp_done_line(r, q);
        pg.refresh = wsp_refresh_of(apr_table_get(q, "refresh"));
        ap_set_content_type(r, "text/html; charset=utf-8");
        if (!r->header_only) {
            wsp_manager_html(r, &pg);
        }
    }
    return OK;
}

/* ---------------------------------------------------------------- Host */

/* Whether name (a host without port or brackets) is one this server
 * answers to: the vhost's ServerName, one of its ServerAlias names
 * (wildcards matched as httpd matches them) or the address the
 * connection arrived on. A foreign name that an attacker's DNS resolves
 * to this address is none of them. */
static int wsp_server_name(request_rec *r, const char *name)
{
    const server_rec *s = r->server;
    const char *ip = r->connection->local_ip;
    int i;

    if (!name || !*name) {
        return 0;
    }
    if ((s->server_hostname && !ap_cstr_casecmp(name, s->server_hostname))
        || (ip && !ap_cstr_casecmp(name, ip))) {
        return 1;
    }
    for (i = 0; s->names && i < s->names->nelts; ++i) {
        const char *alias = APR_ARRAY_IDX(s->names, i, const char *);

        if (alias && !ap_cstr_casecmp(name, alias)) {
            return 1;
        }
    }
    for (i = 0; s->wild_names && i < s->wild_names->nelts; ++i) {
        const char *alias = APR_ARRAY_IDX(s->wild_names, i, const char *);

        if (alias && !ap_strcasecmp_match(name, alias)) {
            return 1;
        }
    }
    return 0;
}

/* Whether port is one a client may reach this server on: the port the
 * connection arrived on, the ServerName's port (a proxy or NAT in front)
 * or the scheme's default (a client that wrote none). */
static int wsp_server_port(request_rec *r, apr_port_t port)
{
    return port == r->connection->local_addr->port
           || (r->server->port && port == r->server->port)
           || port == ap_default_port(r);
}

/* The Host as httpd took it (r->hostname: from the request line's
 * absolute URI or the Host header, lower-cased, without brackets or
 * port), for the log: NULL when the request named no host. */
static const char *wsp_host_of(request_rec *r)
{
    const char *h = r->hostname;

    if (!h) {
        return NULL;
    }
    if (strchr(h, ':')) {
        h = apr_pstrcat(r->pool, "[", h, "]", NULL);
    }
    if (r->parsed_uri.port) {
        h = apr_psprintf(r->pool, "%s:%u", h, r->parsed_uri.port);
    }
    return h;
}

/* Whether the request names this server in its Host. A request without
 * a host (HTTP/1.0) is refused too: every browser and tool sends one. */
static int wsp_host_ok(request_rec *r)
{
    return wsp_server_name(r, r->hostname)
           && (!r->parsed_uri.port
               || wsp_server_port(r, r->parsed_uri.port));
}

/* ---------------------------------------------------------------- POST */

/* Whether url (from Referer or Origin) names this server and a port it
 * is reached on, with the scheme's default port when none is written.
 * Compared with the names the server answers to, not with the Host the
 * request carries, which is the sender's to choose. */
static int wsp_same_host(request_rec *r, const char *url)
{
    apr_uri_t u;
    apr_port_t port;
    apr_size_t len;

    if (apr_uri_parse(r->pool, url, &u) != APR_SUCCESS
        || !u.scheme || !u.hostname || !*u.hostname) {
        return 0;
    }
    port = u.port ? u.port : apr_uri_port_of_scheme(u.scheme);
    /* "admin.example." is "admin.example", as httpd takes it in Host */
    len = strlen(u.hostname);
    if (len > 1 && u.hostname[len - 1] == '.') {
        u.hostname[len - 1] = '\0';
    }
    return wsp_server_name(r, u.hostname) && wsp_server_port(r, port);
}

/* Why this request comes from another site, or NULL. A browser names the
 * page that sent a form in Referer and Origin; a script sends neither. */
static const char *wsp_foreign(request_rec *r)
{
    const char *referer = apr_table_get(r->headers_in, "Referer");
    const char *origin = apr_table_get(r->headers_in, "Origin");

    if (referer && !wsp_same_host(r, referer)) {
        return "Referer names another host";
    }
    if (origin && !wsp_same_host(r, origin)) {
        return "Origin names another host";
    }
    return NULL;
}

/* Compared without an early exit: how long it takes says nothing about
 * how much of a guess was right. */
static int wsp_nonce_ok(const char *given)
{
    const char *want = wsp_shared_nonce();
    apr_size_t wl, gl, i;
    unsigned int diff;

    if (!want || !*want || !given) {
        return 0;
    }
    wl = strlen(want);
    gl = strlen(given);
    diff = wl != gl;
    for (i = 0; i < wl; ++i) {
        diff |= (unsigned char)want[i]
                ^ (unsigned char)(i < gl ? given[i] : 0);
    }
    return !diff;
}

/* The form fields of the body into *form: OK, or the status to answer.
 * A field given twice is refused rather than guessed at. */
static int wsp_read_form(request_rec *r, apr_table_t **form,
                         const char **why)
{
    char *buf, *pair, *last;
    apr_size_t len = 0;
    long n = 0;
    int rc;

    *why = "unreadable body";
    if ((rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK)) != OK) {
        return rc;
    }
    if (r->remaining > WSP_MANAGER_BODY_MAX) {
        *why = "body too large";
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    buf = apr_palloc(r->pool, WSP_MANAGER_BODY_MAX + 2);
    if (ap_should_client_block(r)) {
        /* room for one byte past the cap: reading it means too big */
        while ((n = ap_get_client_block(r, buf + len,
                                        WSP_MANAGER_BODY_MAX + 1 - len))
               > 0) {
            len += n;
            if (len > WSP_MANAGER_BODY_MAX) {
                *why = "body too large";
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
        }
        if (n < 0) {
            return HTTP_BAD_REQUEST;
        }
    }
    buf[len] = '\0';
    *form = apr_table_make(r->pool, 5);
    for (pair = apr_strtok(buf, "&", &last); pair;
         pair = apr_strtok(NULL, "&", &last)) {
        char *val = strchr(pair, '=');

        if (val) {
            *val++ = '\0';
        }
        else {
            val = "";
        }
        if (ap_unescape_urlencoded(pair) || ap_unescape_urlencoded(val)) {
            *why = "bad %-escape in the form";
            return HTTP_BAD_REQUEST;
        }
        if (apr_table_get(*form, pair)) {
            *why = apr_psprintf(r->pool, "field %s given twice",
                                ap_escape_logitem(r->pool, pair));
            return HTTP_BAD_REQUEST;
        }
        apr_table_setn(*form, pair, val);
    }
    return OK;
}

static const char *wsp_logv(request_rec *r, const char *s)
{
    return s ? ap_escape_logitem(r->pool, s) : "-";
}

/* A short JSON answer with the status of a refusal. */
static int wsp_error_json(request_rec *r, int status, const char *why)
{
    r->status = status;
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_type(r, "application/json");
    ap_rprintf(r, "{\"status\": %d, \"error\": %s}\n", status,
               wsp_json_str(r->pool, why));
    return OK;
}

/* The warning of a refused POST: what was asked, by whom and why. */
static void wsp_refuse_log(request_rec *r, int status, const char *action,
                           const char *pool, const char *url,
                           const char *why)
{
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                  "ws_persist: manager: refused %s %s in pool %s by %s: "
                  "%d %s", wsp_logv(r, action), wsp_logv(r, url),
                  wsp_logv(r, pool), r->useragent_ip, status,
                  wsp_logv(r, why));
}

/* A refused POST: the warning and the JSON answer. */
static int wsp_refuse(request_rec *r, int status, const char *action,
                      const char *pool, const char *url, const char *why)
{
    wsp_refuse_log(r, status, action, pool, url, why);
    return wsp_error_json(r, status, why);
}

/* Whether the form came from the page (then=page) and the client wants
 * a page back: a script that asks for JSON gets JSON whatever it posts. */
static int wsp_page_wanted(request_rec *r, apr_table_t *form)
{
    const char *then = form ? apr_table_get(form, "then") : NULL;

    return then && !strcmp(then, "page") && !wsp_wants_json(r);
}

/* A refused action from the page: logged as any refusal, and answered
 * with the page itself (its status the refusal's), saying why. */
static int wsp_refuse_page(request_rec *r, int status, const char *action,
                           const char *pool, const char *url,
                           const char *why, apr_table_t *form)
{
    wsp_page_t pg = { NULL, 1, 0 };

    wsp_refuse_log(r, status, action, pool, url, why);
    pg.line = apr_psprintf(r->pool, "Refused (%d): %s", status,
                           wsp_h(r->pool, why));
    pg.refresh = wsp_refresh_of(apr_table_get(form, "refresh"));
    r->status = status;
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_type(r, "text/html; charset=utf-8");
    wsp_manager_html(r, &pg);
    return OK;
}

/* An applied action from the page: 303 to the page, whose query says
 * what was done, so that a reload does not post the form again. */
static int wsp_see_page(request_rec *r, const char *action,
                        const char *pool, const char *url,
                        apr_table_t *form)
{
    int refresh = wsp_refresh_of(apr_table_get(form, "refresh"));
    const char *loc;

    loc = apr_pstrcat(r->pool, ap_escape_uri(r->pool, r->uri), "?done=",
                      ap_escape_urlencoded(r->pool, action), "&pool=",
                      ap_escape_urlencoded(r->pool, pool), "&backend=",
                      ap_escape_urlencoded(r->pool, url), NULL);
    if (refresh) {
        loc = apr_psprintf(r->pool, "%s&refresh=%d", loc, refresh);
    }
    r->status = HTTP_SEE_OTHER;
    apr_table_setn(r->headers_out, "Location", loc);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_type(r, "text/html; charset=utf-8");
    ap_rvputs(r, "<!DOCTYPE html>\n<p>Done: <a href=\"",
              wsp_h(r->pool, loc), "\">back to the page</a></p>\n", NULL);
    return OK;
}

static int wsp_manager_post(request_rec *r)
{
    const char *why, *ct, *action, *pool, *url, *msg = NULL;
    apr_table_t *form = NULL;
    int status;

    if ((why = wsp_foreign(r)) != NULL) {
        /* not worth reading the body of a refused request */
        r->connection->keepalive = AP_CONN_CLOSE;
        return wsp_refuse(r, HTTP_FORBIDDEN, NULL, NULL, NULL, why);
    }
    ct = apr_table_get(r->headers_in, "Content-Type");
    if (!ct || ap_cstr_casecmpn(ct, "application/x-www-form-urlencoded", 33)
        || (ct[33] && ct[33] != ';' && !apr_isspace(ct[33]))) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return wsp_refuse(r, HTTP_UNSUPPORTED_MEDIA_TYPE, NULL, NULL, NULL,
                          "the body is not application/"
                          "x-www-form-urlencoded");
    }
    if ((status = wsp_read_form(r, &form, &why)) != OK) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return wsp_refuse(r, status, NULL, NULL, NULL, why);
    }
    action = apr_table_get(form, "action");
    pool = apr_table_get(form, "pool");
    url = apr_table_get(form, "backend");
    if (!wsp_nonce_ok(apr_table_get(form, "nonce"))) {
        why = "nonce missing or wrong";
        status = HTTP_FORBIDDEN;
    }
    else if (!action || !*action || !pool || !url || !*url) {
        why = "action, pool and backend are required";
        status = HTTP_BAD_REQUEST;
    }
    else if ((status = wsp_shared_manage(r->pool, action, pool, url, &msg))
             != HTTP_OK) {
        why = msg ? msg : "refused";
    }
    if (status != HTTP_OK) {
        /* the page answered to a refused form is what a GET shows: the
         * Host, Referer and Origin were checked before the form was read */
        return wsp_page_wanted(r, form)
               ? wsp_refuse_page(r, status, action, pool, url, why, form)
               : wsp_refuse(r, status, action, pool, url, why);
    }
    ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r,
                  "ws_persist: manager: %s %s in pool %s by %s",
                  wsp_logv(r, action), wsp_logv(r, url), wsp_logv(r, pool),
                  r->useragent_ip);
    if (wsp_page_wanted(r, form)) {
        return wsp_see_page(r, action, pool, url, form);
    }
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_type(r, "application/json");
    wsp_manager_json(r);
    return OK;
}

int wsp_manager_handler(request_rec *r)
{
    if (!r->handler || strcmp(r->handler, WSP_MANAGER_HANDLER)) {
        return DECLINED;
    }
    /* on err_headers_out, so that refusals and httpd's error pages carry
     * them too: no page of another site may frame the forms and have an
     * administrator click them */
    apr_table_setn(r->err_headers_out, "X-Frame-Options", "DENY");
    apr_table_setn(r->err_headers_out, "Content-Security-Policy",
                   "frame-ancestors 'none'");
    apr_table_setn(r->err_headers_out, "X-Content-Type-Options", "nosniff");
    if (!wsp_host_ok(r)) {
        /* info, not warn: a misdirected request is what a scanner or a
         * rebinding page sends, and it is answered before any state is
         * read */
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "ws_persist: manager: refused a request by %s for "
                      "host %s: not a name of this server",
                      r->useragent_ip, wsp_logv(r, wsp_host_of(r)));
        /* the body stays unread: close rather than read it for the
         * next request */
        r->connection->keepalive = AP_CONN_CLOSE;
        return wsp_error_json(r, HTTP_MISDIRECTED_REQUEST,
                              "the Host does not name this server");
    }
    /* make_allow() builds a 405's Allow from these */
    r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST);
    ap_allow_standard_methods(r, REPLACE_ALLOW, M_GET, M_POST, -1);
    if (r->method_number == M_GET) {         /* HEAD too */
        return wsp_manager_get(r);
    }
    if (r->method_number == M_POST) {
        return wsp_manager_post(r);
    }
    return HTTP_METHOD_NOT_ALLOWED;
}
