/* The ws_persist section of mod_status's page (and of its ?auto form). */
#ifndef WSP_STATUS_H
#define WSP_STATUS_H

#include "httpd.h"
#include "apr_optional_hooks.h"
#include "mod_status.h"

/* mod_status's optional status_hook: register with
 * APR_OPTIONAL_HOOK(ap, status_hook, wsp_status_hook, ...). */
int wsp_status_hook(request_rec *r, int flags);

#endif /* WSP_STATUS_H */
