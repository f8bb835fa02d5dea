/* Socket I/O on the descriptor, for sockets in non-blocking mode with a
 * zero timeout (every socket a pipe reads or writes): recv() and
 * sendmsg(). apr_socket_recv() and apr_socket_sendv() use read() and
 * writev(), which take the file layer's path through the kernel: about
 * 0.9 us more per round trip here than nginx's recvfrom()/sendto(). The
 * results are APR's: APR_EOF at the peer's end, APR_EAGAIN when nothing
 * can move now (*len 0), else the errno. */
#ifndef WSP_SOCK_H
#define WSP_SOCK_H

#include <sys/uio.h>
#include "apr_network_io.h"

apr_status_t wsp_sock_recv(apr_socket_t *s, char *buf, apr_size_t *len);
apr_status_t wsp_sock_send(apr_socket_t *s, const char *buf,
                           apr_size_t *len);
apr_status_t wsp_sock_sendv(apr_socket_t *s, const struct iovec *vec,
                            int nvec, apr_size_t *len);

#endif /* WSP_SOCK_H */
