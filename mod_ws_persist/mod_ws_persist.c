/* mod_ws_persist: an interruption-resistant WebSocket proxy.
 * The module record and hook registration only. */
#define WSP_MODULE_MAIN
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "mod_ws_persist.h"
#include "mpm_common.h"

#include "wsp_checker.h"
#include "wsp_config.h"
#include "wsp_evloop.h"
#include "wsp_handler.h"
#include "wsp_manager.h"
#include "wsp_pipe.h"
#include "wsp_pool.h"
#include "wsp_registry.h"
#include "wsp_resolve.h"
#include "wsp_shared.h"
#include "wsp_status.h"

static void wsp_child_init(apr_pool_t *p, server_rec *s)
{
    apr_status_t rv;

    if ((rv = wsp_shared_child_init(p, s)) != APR_SUCCESS
        || (rv = wsp_registry_child_init(p)) != APR_SUCCESS
        || (rv = wsp_pipe_child_init(p)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s,
                     "ws_persist: cannot set up the child's shared state "
                     "and locks");
        return;
    }
    if ((rv = wsp_resolve_child_init(p, s)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s,
                     "ws_persist: cannot start the resolver thread; backends "
                     "named by host name stay unreachable");
    }
    wsp_evloop_child_init(p, s);
    wsp_checker_child_init();
}

static int wsp_pre_config(apr_pool_t *pconf, apr_pool_t *plog,
                          apr_pool_t *ptemp)
{
    (void)plog;
    (void)ptemp;
    wsp_evloop_wanted = 1;          /* each read of the config starts over */
    wsp_evloop_threads = 0;
    return wsp_shared_pre_config(pconf);
}

static void wsp_register_hooks(apr_pool_t *p)
{
    /* the checker registers with mod_watchdog before its post_config
     * starts what is registered, and attaches the shared state before
     * its child_init starts the thread */
    static const char *const before_wd[] = { "mod_watchdog.c", NULL };

    (void)p;
    ap_hook_pre_config(wsp_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(wsp_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(wsp_shared_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(wsp_checker_post_config, NULL, before_wd,
                        APR_HOOK_MIDDLE);
    ap_hook_child_status(wsp_shared_child_status, NULL, NULL,
                         APR_HOOK_MIDDLE);
    ap_hook_suspend_connection(wsp_evloop_suspended, NULL, NULL,
                               APR_HOOK_MIDDLE);
    ap_hook_child_init(wsp_child_init, NULL, before_wd, APR_HOOK_MIDDLE);
    ap_hook_handler(wsp_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(wsp_manager_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, wsp_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(ws_persist) = {
    STANDARD20_MODULE_STUFF,
    wsp_create_dir_config,
    wsp_merge_dir_config,
    NULL,
    NULL,
    wsp_cmds,
    wsp_register_hooks,
    AP_MODULE_FLAG_NONE
};
