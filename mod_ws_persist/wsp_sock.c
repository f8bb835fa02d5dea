/* Socket I/O on the descriptor; see include/wsp_sock.h. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "apr_portable.h"

#include "wsp_sock.h"

static int wsp_sock_fd(apr_socket_t *s)
{
    apr_os_sock_t fd = -1;

    apr_os_sock_get(&fd, s);
    return fd;
}

static apr_status_t wsp_sock_errno(apr_size_t *len)
{
    *len = 0;
    return errno == EWOULDBLOCK ? APR_EAGAIN : APR_FROM_OS_ERROR(errno);
}

apr_status_t wsp_sock_recv(apr_socket_t *s, char *buf, apr_size_t *len)
{
    int fd = wsp_sock_fd(s);
    ssize_t n;

    do {
        n = recv(fd, buf, *len, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return wsp_sock_errno(len);
    }
    *len = (apr_size_t)n;
    return n == 0 ? APR_EOF : APR_SUCCESS;
}

apr_status_t wsp_sock_send(apr_socket_t *s, const char *buf,
                           apr_size_t *len)
{
    int fd = wsp_sock_fd(s);
    ssize_t n;

    do {
        n = send(fd, buf, *len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return wsp_sock_errno(len);
    }
    *len = (apr_size_t)n;
    return APR_SUCCESS;
}

apr_status_t wsp_sock_sendv(apr_socket_t *s, const struct iovec *vec,
                            int nvec, apr_size_t *len)
{
    struct msghdr mh;
    int fd = wsp_sock_fd(s);
    ssize_t n;

    if (nvec == 1) {
        *len = vec[0].iov_len;
        return wsp_sock_send(s, vec[0].iov_base, len);
    }
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = (struct iovec *)vec;
    mh.msg_iovlen = (size_t)nvec;
    do {
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return wsp_sock_errno(len);
    }
    *len = (apr_size_t)n;
    return APR_SUCCESS;
}
