/* Directives and per-directory configuration. */
#ifndef WSP_CONFIG_H
#define WSP_CONFIG_H

#include "mod_ws_persist.h"

extern const command_rec wsp_cmds[];

void *wsp_create_dir_config(apr_pool_t *p, char *dir);
void *wsp_merge_dir_config(apr_pool_t *p, void *basev, void *addv);

/* Fails the configuration when ws-persist handles a context that has no
 * backend, or a WSPersistBackendSlots line has no backends of its section
 * to size; gives each pool its slots. Runs at configtest and at start,
 * before post_config. */
int wsp_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                     server_rec *s);

#define WSP_DEFAULT_SPARE_SLOTS 16

/* Every pool of the configuration (of wsp_pool_t *), NULL when none;
 * wsp_conf_reset() forgets them, and sets WSPersistResolveInterval back to
 * its default, before the configuration is read again. */
apr_array_header_t *wsp_conf_pools(void);
void wsp_conf_reset(void);

/* The effective values, defaults applied. */
apr_off_t wsp_conf_max_message(const wsp_dir_conf_t *conf);
int wsp_conf_is_failover_code(const wsp_dir_conf_t *conf, int code);
void wsp_conf_pool_opts(const wsp_dir_conf_t *conf, wsp_pool_opts_t *o);

/* Whether WSPersistAllowedOrigin lets a client with this Origin header
 * (NULL: none sent) connect. */
int wsp_conf_origin_allowed(const wsp_dir_conf_t *conf, const char *origin);

#endif /* WSP_CONFIG_H */
