/* Backend host names, resolved where no pipe waits for them: one resolver
 * thread per child looks every name up at child_init and again every
 * WSPersistResolveInterval (or its line's resolve=), and keeps the
 * addresses for connects to copy (DESIGN 8: a loop thread never does a
 * blocking lookup). Numeric addresses are parsed once and never looked
 * up. The names of lines with resolve= or max= have their answers made
 * into members of their pools (wsp_shared_members) when they change. */
#ifndef WSP_RESOLVE_H
#define WSP_RESOLVE_H

#include <netdb.h>

#include <apr_errno.h>
#include <apr_network_io.h>
#include <apr_time.h>

#include "httpd.h"

#define WSP_RESOLVE_DEFAULT_INTERVAL apr_time_from_sec(30)
#define WSP_RESOLVE_MIN_INTERVAL     apr_time_from_sec(1)

/* What a connect to a host whose first lookup is not over gets: the
 * status getaddrinfo() gives when the name server does not answer, as
 * APR folds it (APR makes glibc's negative EAI codes positive). */
#if EAI_AGAIN < 0
#define WSP_RESOLVE_PENDING (APR_OS_START_EAIERR - EAI_AGAIN)
#else
#define WSP_RESOLVE_PENDING (APR_OS_START_EAIERR + EAI_AGAIN)
#endif

/* WSPersistResolveInterval; wsp_conf_reset() sets the default again. */
extern apr_interval_time_t wsp_resolve_interval;

/* Whether host is an address (IPv4 or IPv6), not a name. */
int wsp_resolve_numeric(const char *host);

/* ip (a member's address) with port, in p: parsed, never looked up, and
 * not kept by the resolver (members come and go with DNS answers). */
apr_status_t wsp_resolve_numeric_addr(apr_sockaddr_t **out, const char *ip,
                                      apr_port_t port, apr_pool_t *p);

/* child_init: learn the host of every backend the child can see and
 * start the resolver thread. */
apr_status_t wsp_resolve_child_init(apr_pool_t *pchild, server_rec *s);

/* A copy in p of host's addresses with port, never blocking. An unknown
 * host is learnt and, like one whose first lookup is still under way,
 * gets WSP_RESOLVE_PENDING; a host that never resolved gets the
 * resolver's error. A host that did resolve keeps its last addresses
 * while later lookups fail. */
apr_status_t wsp_resolve_addr(apr_sockaddr_t **out, const char *host,
                              apr_port_t port, apr_pool_t *p);

/* Whether a connect to host can be tried: its first lookup is over
 * (with or without an address). Learns an unknown host. */
int wsp_resolve_ready(const char *host);

/* A connect to host's address did not complete: the name may point
 * elsewhere now. Asks for a lookup before the interval is up, at most
 * one a second per name. */
void wsp_resolve_stale(const char *host);

#endif /* WSP_RESOLVE_H */
