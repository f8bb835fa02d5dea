/* The health checker: WSPersistHealthCheck's checks, run by one process
 * for the whole server on a mod_watchdog singleton thread (DESIGN 8: never
 * in a loop thread, never in request handling). */
#ifndef WSP_CHECKER_H
#define WSP_CHECKER_H

#include "httpd.h"
#include "http_config.h"

/* check_config: fails when a pool has a health check and mod_watchdog is
 * missing. */
int wsp_checker_check_config(server_rec *s);

/* post_config: register the watchdog callback when a pool has a check
 * (before mod_watchdog's own post_config, which starts what is
 * registered). */
int wsp_checker_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s);

/* child_init, once the shared state is attached: checks may run. */
void wsp_checker_child_init(void);

#endif /* WSP_CHECKER_H */
