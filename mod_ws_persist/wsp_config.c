/* Directives: parsing, validation, create and merge of per-dir config. */
#include "httpd.h"
#include "apr_strings.h"
#include "apr_lib.h"
#include "http_config.h"
#include "http_log.h"
#include "http_ssl.h"

#include "mod_ws_persist.h"
#include "wsp_config.h"
#include "wsp_parse.h"
#include "wsp_frame.h"
#include "wsp_evloop.h"
#include "wsp_resolve.h"
#include "wsp_hcheck.h"
#include "wsp_checker.h"

#define WSP_DEFAULT_BUFFER       (5 * 1024 * 1024)
#define WSP_DEFAULT_CONNECT      apr_time_from_sec(10)
#define WSP_DEFAULT_RETRY_MIN    apr_time_from_msec(100)
#define WSP_DEFAULT_RETRY_MAX    apr_time_from_sec(30)
#define WSP_DEFAULT_MAX_ERRORS   100
#define WSP_DEFAULT_PING         apr_time_from_sec(30)
#define WSP_DEFAULT_RESUME_BUF   (256 * 1024)

static const int wsp_default_failover[] = { 1001, 1006, 1011, 1012, 1013,
                                            1014 };

void *wsp_create_dir_config(apr_pool_t *p, char *dir)
{
    wsp_dir_conf_t *conf = apr_pcalloc(p, sizeof(*conf));
    apr_size_t i;

    conf->location = dir;
    conf->location_set = dir != NULL;
    conf->buffer_limit = WSP_DEFAULT_BUFFER;
    conf->connect_timeout = WSP_DEFAULT_CONNECT;
    conf->retry_min = WSP_DEFAULT_RETRY_MIN;
    conf->retry_max = WSP_DEFAULT_RETRY_MAX;
    conf->max_errors = WSP_DEFAULT_MAX_ERRORS;
    conf->id_source = WSP_ID_PATH;
    conf->ping_interval = WSP_DEFAULT_PING;
    conf->resume_buffer = WSP_DEFAULT_RESUME_BUF;
    for (i = 0; i < sizeof(wsp_default_failover) / sizeof(int); i++) {
        conf->failover_codes[i] = wsp_default_failover[i];
    }
    conf->nfailover_codes = (int)i;
    return conf;
}

/* Start from the outer context; take each value the inner one set. */
#define WSP_OVERLAY(field, bit) do { \
    if (add->bit) { conf->field = add->field; conf->bit = 1; } \
} while (0)

void *wsp_merge_dir_config(apr_pool_t *p, void *basev, void *addv)
{
    wsp_dir_conf_t *base = basev, *add = addv;
    wsp_dir_conf_t *conf = apr_pmemdup(p, base, sizeof(*conf));

    WSP_OVERLAY(location, location_set);
    WSP_OVERLAY(pool, pool_set);
    WSP_OVERLAY(buffer_limit, buffer_limit_set);
    WSP_OVERLAY(max_message, max_message_set);
    WSP_OVERLAY(connect_timeout, connect_timeout_set);
    WSP_OVERLAY(max_errors, max_errors_set);
    WSP_OVERLAY(exclusive, exclusive_set);
    WSP_OVERLAY(ack, ack_set);
    WSP_OVERLAY(ping_interval, ping_set);
    WSP_OVERLAY(resume_window, resume_window_set);
    WSP_OVERLAY(resume_buffer, resume_buffer_set);
    WSP_OVERLAY(dup_replace, dup_set);
    WSP_OVERLAY(retry_min, retry_set);
    WSP_OVERLAY(retry_max, retry_set);
    WSP_OVERLAY(id_source, id_source_set);
    WSP_OVERLAY(id_name, id_source_set);
    WSP_OVERLAY(origins, origins_set);
    if (add->failover_set) {
        memcpy(conf->failover_codes, add->failover_codes,
               sizeof(conf->failover_codes));
        conf->nfailover_codes = add->nfailover_codes;
        conf->failover_set = 1;
    }
    return conf;
}

apr_off_t wsp_conf_max_message(const wsp_dir_conf_t *conf)
{
    return conf->max_message_set ? conf->max_message : conf->buffer_limit;
}

int wsp_conf_is_failover_code(const wsp_dir_conf_t *conf, int code)
{
    int i;

    for (i = 0; i < conf->nfailover_codes; i++) {
        if (conf->failover_codes[i] == code) {
            return 1;
        }
    }
    return 0;
}

int wsp_conf_origin_allowed(const wsp_dir_conf_t *conf, const char *origin)
{
    return wsp_origin_allowed(conf->origins, origin);
}

void wsp_conf_pool_opts(const wsp_dir_conf_t *conf, wsp_pool_opts_t *o)
{
    o->retry_min = conf->retry_min;
    o->retry_max = conf->retry_max;
    o->max_errors = conf->max_errors;
    o->exclusive = conf->exclusive;
}

static const char *wsp_bad(cmd_parms *cmd, const char *arg, const char *why)
{
    return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                        cmd->cmd->name, arg, why);
}

static const char *wsp_parse_int(cmd_parms *cmd, const char *arg, int min,
                                 int max, int *out)
{
    char *end;
    apr_int64_t v;

    if (!*arg) {
        return wsp_bad(cmd, arg, "not a number");
    }
    v = apr_strtoi64(arg, &end, 10);
    if (*end || errno == ERANGE || v < min || v > max) {
        return wsp_bad(cmd, arg, apr_psprintf(cmd->pool,
                       "expected a whole number from %d to %d", min, max));
    }
    *out = (int)v;
    return NULL;
}

/* Every pool of the configuration being read, for the shared memory;
 * pre_config starts it over. */
static apr_array_header_t *wsp_pools;

/* A WSPersistBackendSlots line, applied to its section's pool once the
 * whole configuration is read (the backend lines may come after it). */
typedef struct {
    wsp_dir_conf_t *conf;
    int spare;
    const char *where;          /* file:line (section) */
} wsp_slots_line_t;

static apr_array_header_t *wsp_slots_lines;

/* A WSPersistHealthCheck line, applied like WSPersistBackendSlots. */
typedef struct {
    wsp_dir_conf_t *conf;
    wsp_hcheck_t *hc;
    const char *where;
} wsp_hcheck_line_t;

static apr_array_header_t *wsp_hcheck_lines;

void wsp_conf_reset(void)
{
    wsp_pools = NULL;
    wsp_slots_lines = NULL;
    wsp_hcheck_lines = NULL;
    wsp_resolve_interval = WSP_RESOLVE_DEFAULT_INTERVAL;
}

apr_array_header_t *wsp_conf_pools(void)
{
    return wsp_pools;
}

/* This context's pool, made by its first WSPersistBackend (a context
 * without one inherits its enclosing context's). Its name is the location
 * path; a second context with the same path gets "#2" and so on, so the
 * manager can tell them apart. */
static wsp_pool_t *wsp_conf_pool(cmd_parms *cmd, wsp_dir_conf_t *conf)
{
    wsp_pool_t *pool;
    const char *name = cmd->path ? cmd->path : "(server)";
    int i, n = 1;

    if (conf->pool) {
        return conf->pool;
    }
    if (!wsp_pools) {
        wsp_pools = apr_array_make(cmd->pool, 4, sizeof(wsp_pool_t *));
    }
    for (i = 0; i < wsp_pools->nelts; ++i) {
        const char *other = APR_ARRAY_IDX(wsp_pools, i, wsp_pool_t *)->name;
        size_t len = strlen(name);

        if (!strncmp(other, name, len)
            && (!other[len] || other[len] == '#')) {
            n++;
        }
    }
    pool = apr_pcalloc(cmd->pool, sizeof(*pool));
    pool->name = n > 1 ? apr_psprintf(cmd->pool, "%s#%d", name, n) : name;
    pool->backends = apr_array_make(cmd->pool, 4, sizeof(wsp_backend_t *));
    pool->spare = WSP_DEFAULT_SPARE_SLOTS;
    pool->index = -1;
    APR_ARRAY_PUSH(wsp_pools, wsp_pool_t *) = pool;
    conf->pool = pool;
    conf->pool_set = 1;
    return pool;
}

#define WSP_BACKEND_OPTS "expected weight=N, max_errors=N, resolve=TIME or " \
                         "max=N"

/* A whole number option, named whole in its error: "max=0". */
static const char *wsp_parse_opt_int(cmd_parms *cmd, const char *word,
                                     const char *val, int min, int max,
                                     int *out)
{
    if (wsp_parse_int(cmd, val, min, max, out)) {
        return wsp_bad(cmd, word, apr_psprintf(cmd->pool, "expected a "
                       "whole number from %d to %d", min, max));
    }
    return NULL;
}

/* resolve=: how often this line's name is looked up, at least 1s as
 * WSPersistResolveInterval. */
static const char *wsp_parse_resolve(cmd_parms *cmd, const char *word,
                                     const char *val, wsp_backend_t *be)
{
    const char *err = wsp_parse_time(val, &be->resolve);

    if (err) {
        return wsp_bad(cmd, word, err);
    }
    if (be->resolve < WSP_RESOLVE_MIN_INTERVAL) {
        return wsp_bad(cmd, word, "resolve= must be at least 1s");
    }
    return NULL;
}

/* A line with resolve= or max= names a host whose every address is a
 * member of the pool; one without is a single backend, as before. */
static const char *wsp_backend_opts(cmd_parms *cmd, const char *args,
                                    wsp_backend_t *be, int *by_name)
{
    const char *word, *err;

    *by_name = 0;
    while (*(word = ap_getword_conf(cmd->pool, &args))) {
        const char *val = ap_strchr_c(word, '=');
        char *key;

        if (!val) {
            return wsp_bad(cmd, word, WSP_BACKEND_OPTS);
        }
        key = apr_pstrmemdup(cmd->pool, word, val - word);
        val++;
        if (!strcasecmp(key, "weight")) {
            err = wsp_parse_opt_int(cmd, word, val, 1, 1000, &be->weight);
        }
        else if (!strcasecmp(key, "max_errors")) {
            err = wsp_parse_opt_int(cmd, word, val, 1, 1000000,
                                    &be->max_errors);
        }
        else if (!strcasecmp(key, "resolve")) {
            err = wsp_parse_resolve(cmd, word, val, be);
            *by_name = 1;
        }
        else if (!strcasecmp(key, "max")) {
            err = wsp_parse_opt_int(cmd, word, val, 1, WSP_MEMBERS_MAX,
                                    &be->max_members);
            *by_name = 1;
        }
        else {
            err = wsp_bad(cmd, word, WSP_BACKEND_OPTS);
        }
        if (err) {
            return err;
        }
    }
    return NULL;
}

static const char *set_backend(cmd_parms *cmd, void *dconf, const char *args)
{
    wsp_dir_conf_t *conf = dconf;
    wsp_backend_t *be = apr_pcalloc(cmd->pool, sizeof(*be));
    const char *url = ap_getword_conf(cmd->pool, &args);
    const char *err;
    wsp_pool_t *pool;
    int by_name, longest;

    if (!*url) {
        return apr_pstrcat(cmd->pool, cmd->cmd->name,
                           " requires a ws:// or wss:// URL", NULL);
    }
    if ((err = wsp_backend_parse(cmd->pool, url, be))) {
        return wsp_bad(cmd, url, err);
    }
    if (be->tls && !ap_ssl_has_outgoing_handlers()) {
        /* refused rather than spoken in clear text */
        return wsp_bad(cmd, url, "wss:// backends need mod_ssl (load "
                       "ssl_module before this line, then SSLProxyEngine "
                       "on)");
    }
    if ((err = wsp_backend_opts(cmd, args, be, &by_name))) {
        return err;
    }
    /* a member's name is the URL and " (IPv6 address)" */
    longest = WSP_URL_MAX - 1 - (by_name ? WSP_MEMBER_SUFFIX_MAX : 0);
    if (strlen(url) > (apr_size_t)longest) {
        return wsp_bad(cmd, url, apr_psprintf(cmd->pool, "longer than %d "
                       "characters", longest));
    }
    be->st->weight = be->weight;
    be->st->max_errors = be->max_errors;
    pool = wsp_conf_pool(cmd, conf);
    if (!by_name) {
        APR_ARRAY_PUSH(pool->backends, wsp_backend_t *) = be;
        return NULL;
    }
    if (wsp_resolve_numeric(be->host)) {
        return wsp_bad(cmd, url, "resolve= and max= are for a host name; "
                       "this host is an address");
    }
    if (!be->max_members) {
        be->max_members = WSP_MEMBERS_DEFAULT;
    }
    if (!pool->names) {
        pool->names = apr_array_make(cmd->pool, 2, sizeof(wsp_backend_t *));
    }
    APR_ARRAY_PUSH(pool->names, wsp_backend_t *) = be;
    return NULL;
}

/* Where a directive is, for messages: file:line and its section. */
static const char *wsp_where(apr_pool_t *p, const ap_directive_t *d)
{
    const ap_directive_t *sec = d->parent;

    return apr_psprintf(p, "%s:%d (%s%s%s)", d->filename, d->line_num,
                        sec ? sec->directive : "server config",
                        sec ? " " : "", sec ? sec->args : "");
}

/* Sizes the pool of its own section only: a pool is made by backends, so
 * that a section that names none keeps the one it inherits. */
static const char *set_backend_slots(cmd_parms *cmd, void *dconf,
                                     const char *arg)
{
    wsp_slots_line_t *line;
    int spare;
    const char *err = wsp_parse_int(cmd, arg, 0, 1024, &spare);

    if (err) {
        return err;
    }
    if (!wsp_slots_lines) {
        wsp_slots_lines = apr_array_make(cmd->pool, 4, sizeof(*line));
    }
    line = apr_array_push(wsp_slots_lines);
    line->conf = dconf;
    line->spare = spare;
    line->where = wsp_where(cmd->pool, cmd->directive);
    return NULL;
}

/* Checks the pool of its own section only, as WSPersistBackendSlots
 * sizes it. */
static const char *set_health_check(cmd_parms *cmd, void *dconf,
                                    const char *args)
{
    wsp_hcheck_line_t *line;
    wsp_hcheck_t *hc = apr_pcalloc(cmd->pool, sizeof(*hc));
    const char *err = wsp_hcheck_parse(cmd->pool, args, hc);

    if (err) {
        return apr_psprintf(cmd->pool, "%s: %s", cmd->cmd->name, err);
    }
    hc->server = cmd->server;
    if (!wsp_hcheck_lines) {
        wsp_hcheck_lines = apr_array_make(cmd->pool, 4, sizeof(*line));
    }
    line = apr_array_push(wsp_hcheck_lines);
    line->conf = dconf;
    line->hc = hc;
    line->where = wsp_where(cmd->pool, cmd->directive);
    return NULL;
}

static const char *set_size(cmd_parms *cmd, void *dconf, const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    apr_off_t v;
    const char *err = wsp_parse_size(arg, &v);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    if (v <= 0) {
        return wsp_bad(cmd, arg, "must be more than 0");
    }
    if (cmd->info) {
        conf->max_message = v;
        conf->max_message_set = 1;
    }
    else {
        conf->buffer_limit = v;
        conf->buffer_limit_set = 1;
    }
    return NULL;
}

static const char *set_connect_timeout(cmd_parms *cmd, void *dconf,
                                       const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err = wsp_parse_time(arg, &conf->connect_timeout);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    if (conf->connect_timeout <= 0) {
        return wsp_bad(cmd, arg, "must be more than 0");
    }
    conf->connect_timeout_set = 1;
    return NULL;
}

static const char *set_ping(cmd_parms *cmd, void *dconf, const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err = wsp_parse_time(arg, &conf->ping_interval);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    conf->ping_set = 1;
    return NULL;
}

static const char *set_resume_window(cmd_parms *cmd, void *dconf,
                                     const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err = wsp_parse_time(arg, &conf->resume_window);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    conf->resume_window_set = 1;
    return NULL;
}

static const char *set_resume_buffer(cmd_parms *cmd, void *dconf,
                                     const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    apr_off_t v;
    const char *err = wsp_parse_size(arg, &v);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    conf->resume_buffer = v;
    conf->resume_buffer_set = 1;
    return NULL;
}

static const char *set_retry(cmd_parms *cmd, void *dconf, const char *min,
                             const char *max)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err;

    if ((err = wsp_parse_time(min, &conf->retry_min))) {
        return wsp_bad(cmd, min, err);
    }
    if (conf->retry_min <= 0) {
        return wsp_bad(cmd, min, "must be more than 0");
    }
    if (max) {
        if ((err = wsp_parse_time(max, &conf->retry_max))) {
            return wsp_bad(cmd, max, err);
        }
        if (conf->retry_max < conf->retry_min) {
            return wsp_bad(cmd, max, "MAX is less than MIN");
        }
    }
    else if (conf->retry_max < conf->retry_min) {
        conf->retry_max = conf->retry_min;
    }
    conf->retry_set = 1;
    return NULL;
}

static const char *set_max_errors(cmd_parms *cmd, void *dconf,
                                  const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err = wsp_parse_int(cmd, arg, 1, 1000000, &conf->max_errors);

    conf->max_errors_set = !err;
    return err;
}

static const char *set_client_id(cmd_parms *cmd, void *dconf,
                                 const char *mode, const char *name)
{
    wsp_dir_conf_t *conf = dconf;
    int needs_name = 1;

    if (!strcasecmp(mode, "path")) {
        conf->id_source = WSP_ID_PATH;
        needs_name = 0;
    }
    else if (!strcasecmp(mode, "generate")) {
        conf->id_source = WSP_ID_GENERATE;
        needs_name = 0;
    }
    else if (!strcasecmp(mode, "header")) {
        conf->id_source = WSP_ID_HEADER;
    }
    else if (!strcasecmp(mode, "query")) {
        conf->id_source = WSP_ID_QUERY;
    }
    else if (!strcasecmp(mode, "cookie")) {
        conf->id_source = WSP_ID_COOKIE;
    }
    else {
        return wsp_bad(cmd, mode, "expected path, header NAME, query NAME, "
                       "cookie NAME or generate");
    }
    if (needs_name && (!name || !*name)) {
        return wsp_bad(cmd, mode, "needs a NAME");
    }
    if (!needs_name && name) {
        return wsp_bad(cmd, name, apr_pstrcat(cmd->pool, mode,
                                              " takes no NAME", NULL));
    }
    conf->id_name = name;
    conf->id_source_set = 1;
    return NULL;
}

static const char *set_duplicate(cmd_parms *cmd, void *dconf,
                                 const char *arg)
{
    wsp_dir_conf_t *conf = dconf;

    if (!strcasecmp(arg, "reject")) {
        conf->dup_replace = 0;
    }
    else if (!strcasecmp(arg, "replace")) {
        conf->dup_replace = 1;
    }
    else {
        return wsp_bad(cmd, arg, "expected reject or replace");
    }
    conf->dup_set = 1;
    return NULL;
}

static const char *set_exclusive(cmd_parms *cmd, void *dconf, int on)
{
    wsp_dir_conf_t *conf = dconf;

    (void)cmd;
    conf->exclusive = on;
    conf->exclusive_set = 1;
    return NULL;
}

static const char *set_ack(cmd_parms *cmd, void *dconf, int on)
{
    wsp_dir_conf_t *conf = dconf;

    (void)cmd;
    conf->ack = on;
    conf->ack_set = 1;
    return NULL;
}

static const char *set_failover_codes(cmd_parms *cmd, void *dconf,
                                      const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    int code;
    const char *err;

    if (!conf->failover_set) {
        conf->nfailover_codes = 0;
        conf->failover_set = 1;
    }
    if ((err = wsp_parse_int(cmd, arg, 1000, 4999, &code))) {
        return err;
    }
    if (code != WSP_CLOSE_ABNORMAL && !wsp_close_code_valid(code)) {
        return wsp_bad(cmd, arg, "not a WebSocket close code");
    }
    if (conf->nfailover_codes >= WSP_MAX_FAILOVER_CODES) {
        return wsp_bad(cmd, arg, "too many codes");
    }
    conf->failover_codes[conf->nfailover_codes++] = code;
    return NULL;
}

static const char *set_event_loop(cmd_parms *cmd, void *dconf, int on)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dconf;
    if (err) {
        return err;
    }
    wsp_evloop_wanted = on;
    return NULL;
}

static const char *set_event_loop_threads(cmd_parms *cmd, void *dconf,
                                          const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dconf;
    if (err) {
        return err;
    }
    return wsp_parse_int(cmd, arg, 1, 64, &wsp_evloop_threads);
}

static const char *set_resolve_interval(cmd_parms *cmd, void *dconf,
                                        const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    apr_interval_time_t v;

    (void)dconf;
    if (err) {
        return err;
    }
    if ((err = wsp_parse_time(arg, &v))) {
        return wsp_bad(cmd, arg, err);
    }
    if (v < WSP_RESOLVE_MIN_INTERVAL) {
        /* every child looks every name up this often */
        return wsp_bad(cmd, arg, "must be at least 1s");
    }
    wsp_resolve_interval = v;
    return NULL;
}

/* Each context's list replaces the enclosing one's ("*" lifts it). */
static const char *set_allowed_origin(cmd_parms *cmd, void *dconf,
                                      const char *arg)
{
    wsp_dir_conf_t *conf = dconf;
    const char *err = wsp_origin_check(arg);

    if (err) {
        return wsp_bad(cmd, arg, err);
    }
    if (!conf->origins_set) {
        conf->origins = apr_array_make(cmd->pool, 4, sizeof(const char *));
        conf->origins_set = 1;
    }
    APR_ARRAY_PUSH(conf->origins, const char *) = arg;
    return NULL;
}

const command_rec wsp_cmds[] = {
    AP_INIT_RAW_ARGS("WSPersistBackend", set_backend, NULL, RSRC_CONF
                     | ACCESS_CONF, "ws://host:port/path [weight=N] "
                     "[max_errors=N] [resolve=TIME] [max=N]: a backend of "
                     "this location's pool; with resolve= or max=, each "
                     "address of the host is one"),
    AP_INIT_TAKE1("WSPersistBackendSlots", set_backend_slots, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "spare slots for backends added at run time (16)"),
    AP_INIT_RAW_ARGS("WSPersistHealthCheck", set_health_check, NULL,
                     RSRC_CONF | ACCESS_CONF, "tcp | ws:/PATH | get:/PATH "
                     "[interval=5s] [timeout=2s] [fails=1] [passes=1]: "
                     "check this location's backends in the background"),
    AP_INIT_TAKE1("WSPersistBufferLimit", set_size, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "bytes of client messages a pipe may hold (5M)"),
    AP_INIT_TAKE1("WSPersistMaxMessageSize", set_size, (void *)1,
                  RSRC_CONF | ACCESS_CONF,
                  "largest message accepted from either side"),
    AP_INIT_TAKE1("WSPersistConnectTimeout", set_connect_timeout, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "longest wait for a usable backend (10)"),
    AP_INIT_TAKE12("WSPersistRetry", set_retry, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "MIN [MAX] back-off of an errored backend (100ms 30s)"),
    AP_INIT_TAKE1("WSPersistMaxErrors", set_max_errors, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "failures in a row that remove a backend (100)"),
    AP_INIT_TAKE12("WSPersistClientId", set_client_id, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "path | header NAME | query NAME | cookie NAME | "
                   "generate"),
    AP_INIT_TAKE1("WSPersistDuplicateClient", set_duplicate, NULL,
                  RSRC_CONF | ACCESS_CONF, "reject | replace"),
    AP_INIT_FLAG("WSPersistExclusive", set_exclusive, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On: a backend serves one pipe at a time"),
    AP_INIT_FLAG("WSPersistAck", set_ack, NULL, RSRC_CONF | ACCESS_CONF,
                 "On: client messages are kept until a backend "
                 "acknowledges them (wsp-ack:K pongs, "
                 "X-WS-Persist-Received) and resent after a failover"),
    AP_INIT_TAKE1("WSPersistPingInterval", set_ping, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "ping a quiet hop after this long; 0 disables (30)"),
    AP_INIT_TAKE1("WSPersistResumeWindow", set_resume_window, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "how long a session outlives its client's connection "
                  "when it drops without a close frame; 0: not at all (0)"),
    AP_INIT_TAKE1("WSPersistResumeBuffer", set_resume_buffer, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "bytes of backend messages kept once written to the "
                  "client, for a resume (256K)"),
    AP_INIT_ITERATE("WSPersistFailoverCodes", set_failover_codes, NULL,
                    RSRC_CONF | ACCESS_CONF,
                    "backend close codes that mean fail over"),
    AP_INIT_ITERATE("WSPersistAllowedOrigin", set_allowed_origin, NULL,
                    RSRC_CONF | ACCESS_CONF,
                    "Origins a browser client may connect from (any when "
                    "unset; \"*\" lifts an outer list); other Origins "
                    "get 403"),
    AP_INIT_FLAG("WSPersistEventLoop", set_event_loop, NULL, RSRC_CONF,
                 "On: under the event MPM idle pipes hold no worker "
                 "thread (default)"),
    AP_INIT_TAKE1("WSPersistEventLoopThreads", set_event_loop_threads, NULL,
                  RSRC_CONF, "loop threads per child (default: one per "
                  "CPU)"),
    AP_INIT_TAKE1("WSPersistResolveInterval", set_resolve_interval, NULL,
                  RSRC_CONF, "how often each child looks backend host names "
                  "up again (30s)"),
    { NULL }
};

/* SetHandler ws-persist needs a WSPersistBackend in its own section or an
 * enclosing one. Walking the parsed tree finds it at configtest, before any
 * request could reach a pool-less handler. */
static int wsp_check_tree(const ap_directive_t *first, int has_backend,
                          server_rec *s)
{
    const ap_directive_t *d;
    int rv = OK;

    for (d = first; d; d = d->next) {
        if (!strcasecmp(d->directive, "WSPersistBackend")) {
            has_backend = 1;
        }
    }
    for (d = first; d; d = d->next) {
        if (!strcasecmp(d->directive, "SetHandler") && d->args) {
            char *h = apr_pstrdup(s->process->pconf, d->args);
            apr_size_t n = strlen(h);

            if (n >= 2 && (h[0] == '"' || h[0] == '\'')
                && h[n - 1] == h[0]) {
                h[n - 1] = '\0';
                h++;
            }
            if (!strcasecmp(h, WSP_HANDLER) && !has_backend) {
                ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                             "ws_persist: SetHandler ws-persist at %s has "
                             "no WSPersistBackend in its section or an "
                             "enclosing one", wsp_where(s->process->pconf,
                                                        d));
                rv = !OK;
            }
        }
        if (d->first_child
            && wsp_check_tree(d->first_child, has_backend, s) != OK) {
            rv = !OK;
        }
    }
    return rv;
}

/* Each WSPersistBackendSlots line onto the pool its section's backends
 * made. Without one the line would size nothing (the section serves from
 * the pool it inherits, or from none): refused, so that the admin learns
 * where the slots must go. */
static int wsp_apply_slots(server_rec *s)
{
    int i, rv = OK;

    for (i = 0; wsp_slots_lines && i < wsp_slots_lines->nelts; ++i) {
        wsp_slots_line_t *line = &APR_ARRAY_IDX(wsp_slots_lines, i,
                                                wsp_slots_line_t);

        if (line->conf->pool) {
            line->conf->pool->spare = line->spare;
            continue;
        }
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                     "ws_persist: WSPersistBackendSlots at %s: this section "
                     "has no WSPersistBackend of its own; the slots belong "
                     "beside the WSPersistBackend lines of the pool they "
                     "are for", line->where);
        rv = !OK;
    }
    return rv;
}

/* Each WSPersistHealthCheck line onto the pool its section's backends
 * made; refused without one, and twice for one pool. */
static int wsp_apply_hchecks(server_rec *s)
{
    int i, rv = OK;

    for (i = 0; wsp_hcheck_lines && i < wsp_hcheck_lines->nelts; ++i) {
        wsp_hcheck_line_t *line = &APR_ARRAY_IDX(wsp_hcheck_lines, i,
                                                 wsp_hcheck_line_t);
        wsp_pool_t *pool = line->conf->pool;

        if (pool && !pool->hcheck) {
            pool->hcheck = line->hc;
            continue;
        }
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_CRIT, 0, s,
                     "ws_persist: WSPersistHealthCheck at %s: %s", line->where,
                     pool ? "this section's pool has a health check already"
                          : "this section has no WSPersistBackend of its "
                            "own; the check belongs beside the "
                            "WSPersistBackend lines of the pool it is for");
        rv = !OK;
    }
    return rv;
}

int wsp_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                     server_rec *s)
{
    int tree, slots, hchecks;

    (void)pconf;
    (void)plog;
    (void)ptemp;
    tree = wsp_check_tree(ap_conftree, 0, s);
    slots = wsp_apply_slots(s);
    hchecks = wsp_apply_hchecks(s);
    if (hchecks == OK) {
        hchecks = wsp_checker_check_config(s);
    }
    return tree == OK && slots == OK && hchecks == OK
           ? OK : HTTP_INTERNAL_SERVER_ERROR;
}
