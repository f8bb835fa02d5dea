/* The ws-persist handler: the client handshake answers, the client id,
 * the 101, and running the pipe. */
#ifndef WSP_HANDLER_H
#define WSP_HANDLER_H

#include "httpd.h"

int wsp_handler(request_rec *r);

#endif /* WSP_HANDLER_H */
