/* The ws-persist-manager handler: the backends of every pool, as an HTML
 * page or JSON, and the administrator's actions on them (add, drain,
 * remove, enable, disable), applied in shared memory for every child. */
#ifndef WSP_MANAGER_H
#define WSP_MANAGER_H

#include "httpd.h"

#define WSP_MANAGER_HANDLER "ws-persist-manager"

int wsp_manager_handler(request_rec *r);

#endif /* WSP_MANAGER_H */
