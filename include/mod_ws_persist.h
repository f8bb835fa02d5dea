/* Types shared by the httpd side of mod_ws_persist. */
#ifndef MOD_WS_PERSIST_H
#define MOD_WS_PERSIST_H

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "wsp_pool.h"

#define WSP_HANDLER "ws-persist"

extern module AP_MODULE_DECLARE_DATA ws_persist_module;

/* mod_ws_persist.c declares the module, which defines its log index */
#ifndef WSP_MODULE_MAIN
APLOG_USE_MODULE(ws_persist);
#endif

typedef enum {
    WSP_ID_PATH = 0,
    WSP_ID_HEADER,
    WSP_ID_QUERY,
    WSP_ID_COOKIE,
    WSP_ID_GENERATE
} wsp_id_source_e;

#define WSP_MAX_FAILOVER_CODES 32

/* Per-directory configuration; *_set bits say what a context set itself,
 * so a merge takes the inner value only where one was given. */
typedef struct {
    const char *location;              /* <Location> path, NULL outside */
    wsp_pool_t *pool;                  /* this context's backends */
    apr_off_t buffer_limit;
    apr_off_t max_message;             /* 0: the buffer limit */
    apr_interval_time_t connect_timeout;
    apr_interval_time_t retry_min;
    apr_interval_time_t retry_max;
    int max_errors;
    wsp_id_source_e id_source;
    const char *id_name;               /* header, query or cookie name */
    int dup_replace;
    int exclusive;
    int ack;                           /* WSPersistAck: keep client
                                        * messages until a backend
                                        * acknowledges them */
    apr_interval_time_t ping_interval; /* 0: no pings */
    apr_interval_time_t resume_window; /* 0: a client's drop ends the
                                        * session */
    apr_off_t resume_buffer;           /* backend messages kept once
                                        * written, for a resume */
    int failover_codes[WSP_MAX_FAILOVER_CODES];
    int nfailover_codes;
    apr_array_header_t *origins;       /* WSPersistAllowedOrigin (const
                                        * char *), NULL: any Origin */

    unsigned int location_set:1;
    unsigned int pool_set:1;
    unsigned int buffer_limit_set:1;
    unsigned int max_message_set:1;
    unsigned int connect_timeout_set:1;
    unsigned int retry_set:1;
    unsigned int max_errors_set:1;
    unsigned int id_source_set:1;
    unsigned int dup_set:1;
    unsigned int exclusive_set:1;
    unsigned int ack_set:1;
    unsigned int ping_set:1;
    unsigned int resume_window_set:1;
    unsigned int resume_buffer_set:1;
    unsigned int failover_set:1;
    unsigned int origins_set:1;
} wsp_dir_conf_t;

#endif /* MOD_WS_PERSIST_H */
