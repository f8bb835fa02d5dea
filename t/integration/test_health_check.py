"""Active health checks (WSPersistHealthCheck): one process of the server
checks every backend of a pool in the background; a backend that fails its
check is taken out before any client pays for it, one that passes again is
ok at once, and the manager, mod_status and the error log say so."""

import asyncio
import http.server
import os
import re
import signal
import socket
import socketserver
import threading

import pytest

from wsp_env import HOST, MODDIR, await_until, connect, wait_until, whoami
from wsp_manage import MANAGER, TWO_CHILDREN, applied, backend_of, child_of, \
    request, state

STATUS = """\
LoadModule status_module {moddir}/mod_status.so
<Location "/server-status">
    SetHandler server-status
</Location>
""".format(moddir=MODDIR)

FAST = ("WSPersistConnectTimeout 5", "WSPersistRetry 50ms 500ms")


def start(env, backends, check, *lines):
    env.start_httpd(MANAGER + STATUS + env.location(
        "/ws/", backends, *FAST, "WSPersistHealthCheck " + check, *lines))


def check_of(env, be):
    url = be if isinstance(be, str) else be.url
    return backend_of(state(env), url)


def wait_check(env, be, result, what, timeout=15):
    """Poll the manager until be's last check has this result."""
    def done():
        info = check_of(env, be)
        return info if info["check"] and \
            info["check"]["result"] == result else None
    return wait_until(done, timeout, what=what)


def down_rx(be, kind, why):
    url = be if isinstance(be, str) else be.url
    return (r"ws_persist: health check \(%s\) of backend %s in pool /ws/ "
            r"failed: %s; taken out until it passes$"
            % (kind, re.escape(url), why))


def up_rx(be, kind):
    url = be if isinstance(be, str) else be.url
    return (r"ws_persist: health check \(%s\) of backend %s in pool /ws/ "
            r"passed: back in" % (kind, re.escape(url)))


def log_has(env, rx):
    return any(re.search(rx, l) for l in env.httpd.log_text().splitlines())


def served_by(env, n):
    """The backend names n fresh clients are given."""
    async def run():
        names = []
        for _ in range(n):
            async with connect(env) as ws:
                names.append((await whoami(ws))["name"])
        return names
    return asyncio.run(run())


# --------------------------------------------------------------------------
# down


def test_killed_backend_is_taken_out_before_any_client_tries_it(env):
    """A SIGKILLed backend fails its TCP check and is out before a client
    connects: every client goes straight to the good backend, and no
    handshake with the dead one is ever tried (no 'handshake failed',
    no refused connect of a pipe)."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], "tcp interval=200ms timeout=200ms")
    wait_check(env, b1, "pass", "b1's first check")
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    b1.kill()
    info = wait_check(env, b1, "fail", "b1's check failing")
    assert info["state"] == "error", info
    assert info["check"]["reason"] == "connect: Connection refused", info

    assert served_by(env, 4) == ["b2"] * 4
    assert not log_has(env, r"handshake failed|cannot connect")
    assert check_of(env, b1)["errors"] == 0     # no client paid for it


def test_hung_backend_is_cut_at_the_timeout_and_taken_out(env):
    """A backend that accepts but never answers (SIGSTOP: the kernel still
    completes the TCP handshake) fails its WebSocket check at the timeout,
    and is taken out; clients get the other backend."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], "ws:/echo/ interval=500ms timeout=300ms")
    wait_check(env, b1, "pass", "b1's first check")
    why = r"no answer within 300 ms \(waiting for the answer\)"
    env.expect_warn(down_rx(b1, "ws", why))
    b1.pause()
    info = wait_check(env, b1, "fail", "b1's check timing out")
    assert re.fullmatch(why, info["check"]["reason"]), info
    assert info["state"] == "error", info
    assert served_by(env, 3) == ["b2"] * 3
    assert not log_has(env, r"handshake failed")


def test_ws_check_fails_on_a_path_the_backend_refuses(env):
    """The ws check is a real handshake to its path: a listener that is
    up but answers it with a 404 instead of a 101 fails it, while the
    WebSocket backend beside it passes."""
    srv = HttpBackend(env, 404)
    url = "ws://%s:%d/" % (HOST, srv.port)
    b1 = env.backend("b1")
    env.expect_warn(down_rx(url, "ws", r"status 404.*"))
    try:
        start(env, [b1, url], "ws:/echo/ interval=300ms timeout=300ms")
        info = wait_check(env, url, "fail", "the HTTP listener failing")
        assert info["check"]["reason"].startswith("status 404"), info
        # the two checks run side by side: b1's may end later
        wait_check(env, b1, "pass", "the WebSocket backend passing")
    finally:
        srv.close()


# --------------------------------------------------------------------------
# up


def test_backend_restarted_on_its_port_is_back_at_once(env):
    """A backend down by its check that comes back on the same port passes
    the next check and is ok at once, logged as back in; a client is then
    served by it."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], "tcp interval=200ms timeout=200ms")
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    env.expect_warn(down_rx(b2, "tcp", "connect: Connection refused"))
    wait_check(env, b1, "pass", "b1's first check")
    b1.kill()
    wait_check(env, b1, "fail", "b1 down")
    b1.start()
    info = wait_check(env, b1, "pass", "b1 back")
    assert info["state"] == "ok", info
    wait_until(lambda: log_has(env, up_rx(b1, "tcp")), 10,
               what="the back-in line")
    # b2 out too: only b1 can serve now
    b2.kill()
    wait_check(env, b2, "fail", "b2 down")
    assert served_by(env, 2) == ["b1"] * 2


def test_passing_check_clears_a_client_failure_back_off(env):
    """A backend a pipe saw fail is backing off (WSPersistRetry 60s); its
    next passing check makes it ok at once instead of a minute later."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(MANAGER + env.location(
        "/ws/", [b1, b2], "WSPersistConnectTimeout 5", "WSPersistRetry 60s",
        "WSPersistHealthCheck tcp interval=300ms timeout=200ms"))
    wait_check(env, b1, "pass", "b1's first check")

    async def run():
        async with connect(env) as ws:
            first = (await whoami(ws))["name"]
            env.expect_warn(
                r"ws_persist: client \S+ \(\S+\) backend \S+: backend "
                r"interrupted \(close 1011.*\); failing over")
            await ws.send("close:1011:bye")
            # a message sent before the failover may be lost with b1
            await await_until(lambda: log_has(env, r"failing over"), 10,
                              what="the failover")
            return first, (await whoami(ws))["name"]
    first, _ = asyncio.run(run())
    lost = b1 if first == "b1" else b2
    # the pass that follows the failure clears the minute of back-off
    wait_until(lambda: check_of(env, lost)["state"] == "ok", 10,
               what="the failed backend ok again")
    assert check_of(env, lost)["errors"] >= 1
    assert log_has(env, up_rx(lost, "tcp"))


def test_backend_added_at_run_time_is_checked(env):
    """A backend the manager adds is checked like a configured one: one
    that does not listen is down before a client meets it."""
    b1 = env.backend("b1")
    start(env, [b1], "tcp interval=200ms timeout=200ms")
    wait_check(env, b1, "pass", "b1's first check")
    with socket.socket() as s:
        s.bind((HOST, 0))
        dead = "ws://%s:%d/echo/" % (HOST, s.getsockname()[1])
    env.expect_warn(down_rx(dead, "tcp", "connect: Connection refused"))
    applied(env, "add", dead)
    info = wait_check(env, dead, "fail", "the added backend checked")
    assert info["state"] == "error", info
    assert served_by(env, 3) == ["b1"] * 3
    assert not log_has(env, r"handshake failed")


# --------------------------------------------------------------------------
# get


class HttpBackend:
    """A plain HTTP listener in the test: answers every GET with status
    (changeable), and records the paths and Host headers it saw."""

    def __init__(self, env, status):
        self.status = status
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.seen.append((self.path, self.headers.get("Host")))
                body = b"ok\n" if outer.status < 300 else b"no\n"
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = env.port()
        self.server = socketserver.ThreadingTCPServer((HOST, self.port),
                                                      Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_get_check_wants_2xx(env):
    """get:/path passes on 2xx and fails on 503 (down, the status named);
    the next 200 brings it back. The request is GET path with the
    backend's Host."""
    srv = HttpBackend(env, 200)
    url = "ws://%s:%d/" % (HOST, srv.port)
    try:
        start(env, [url], "get:/health?deep=1 interval=300ms timeout=300ms")
        wait_check(env, url, "pass", "the 200 passing")
        assert srv.seen[0] == ("/health?deep=1", "%s:%d" % (HOST, srv.port))
        env.expect_warn(down_rx(url, "get", "status 503"))
        srv.status = 503
        info = wait_check(env, url, "fail", "the 503 failing")
        assert info["check"]["reason"] == "status 503", info
        assert info["state"] == "error", info
        srv.status = 204
        info = wait_check(env, url, "pass", "the 204 passing")
        assert info["state"] == "ok", info
    finally:
        env.shutdown()      # no check may meet the server gone
        srv.close()


def test_get_check_bounds_what_it_reads(env):
    """An answer whose first 4 KB hold no status line fails the check:
    the checker reads no further."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = env.port()
    lsock.bind((HOST, port))
    lsock.listen(16)
    stop = threading.Event()

    def serve():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except OSError:
                continue
            try:
                c.sendall(b"HTTP/1.1 200" + b"x" * 8192)
            except OSError:
                pass
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    url = "ws://%s:%d/" % (HOST, port)
    try:
        env.expect_warn(down_rx(url, "get", "no status line in the first "
                                "4 KB of the answer"))
        start(env, [url], "get:/ interval=300ms timeout=300ms")
        wait_check(env, url, "fail", "the endless status line failing")
    finally:
        stop.set()
        t.join()
        lsock.close()


# --------------------------------------------------------------------------
# where results show


def test_manager_html_and_mod_status_show_the_last_check(env):
    """The manager's HTML row, mod_status's table and its ?auto lines
    carry each backend's last check: pass, or fail with why, and when."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], "tcp interval=200ms timeout=200ms")
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    wait_check(env, b2, "pass", "b2 checked")
    b1.kill()
    wait_check(env, b1, "fail", "b1 down")

    status, _, body = request(env, "GET", headers={"Accept": "text/html"})
    html = body.decode()
    assert status == 200
    assert "<th>check</th>" in html
    assert re.search(r"fail: connect: Connection refused \(\d{4}-\d\d-\d\d "
                     r"\d\d:\d\d:\d\d UTC\)", html), html

    _, _, body = request(env, "GET", "/server-status?auto")
    lines = body.decode().splitlines()
    mine = [l for l in lines if l.startswith("WSPersistBackend[")]
    b1_line = [l for l in mine if str(b1.port) in l]
    b2_line = [l for l in mine if str(b2.port) in l]
    assert re.search(r" check=fail check_at=\d{10}$", b1_line[0]), mine
    assert re.search(r" check=pass check_at=\d{10}$", b2_line[0]), mine
    _, _, body = request(env, "GET", "/server-status")
    assert "<th>Check</th>" in body.decode()
    assert "fail: connect: Connection refused" in body.decode()


def test_off_by_default(env):
    """Without WSPersistHealthCheck nothing is checked: the manager's
    check is null and no checker runs."""
    b1 = env.backend("b1")
    env.start_httpd(MANAGER + env.location("/ws/", [b1], *FAST))
    assert served_by(env, 1) == ["b1"]
    assert check_of(env, b1)["check"] is None
    assert not log_has(env, r"health check")


# --------------------------------------------------------------------------
# configuration


def location(*lines, backend=True):
    body = ['<Location "/ws/">', "    SetHandler ws-persist"]
    if backend:
        body.append("    WSPersistBackend ws://127.0.0.1:9/echo/")
    body += ["    " + l for l in lines]
    return "\n".join(body + ["</Location>"]) + "\n"


@pytest.mark.parametrize("args,names", [
    ("", "expected tcp"),
    ("ping", "'ping'"),
    ("ws:echo", "'ws:echo'"),
    ("get:/a b", "interval=TIME"),     # 'b' is not an option
    ("tcp interval=soon", "'interval=soon'"),
    ("tcp timeout=-1", "'timeout=-1'"),
    ("tcp fails=0", "'fails=0'"),
    ("tcp passes=many", "'passes=many'"),
    ("tcp every=5s", "'every=5s'"),
    ("tcp interval=1s timeout=2s", "longer than the interval"),
    ("tcp interval=10ms timeout=5ms", "at least 100ms"),
])
def test_bad_health_check_fails_configtest(env, args, names):
    rc, out = env.conf(location("WSPersistHealthCheck " + args)).configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistHealthCheck" in out and names in out, out


def test_health_check_without_backends_of_its_section_fails(env):
    rc, out = env.conf(location("WSPersistHealthCheck tcp",
                                backend=False)).configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistHealthCheck" in out, out


def test_two_health_checks_for_one_pool_fail(env):
    rc, out = env.conf(location("WSPersistHealthCheck tcp",
                                "WSPersistHealthCheck get:/")).configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "has a health check already" in out, out


@pytest.mark.parametrize("args", [
    "tcp", "TCP interval=1s", "ws:/echo/ interval=10s timeout=3s fails=3 "
    "passes=2", "get:/health?x=1 timeout=250ms"])
def test_good_health_check_passes_configtest(env, args):
    rc, out = env.conf(location("WSPersistHealthCheck " + args)).configtest()
    assert rc == 0, out


# --------------------------------------------------------------------------
# one checker for the whole server


RUNS_RX = (r"\[pid (\d+):tid \d+\] .*ws_persist: health checks run in this "
           r"child")


def checker_pids(env):
    return [int(m.group(1)) for m in
            (re.search(RUNS_RX, l) for l in env.httpd.log_text().splitlines())
            if m]


def start_two(env, backends, check):
    env.start_httpd(TWO_CHILDREN + MANAGER + env.location(
        "/ws/", backends, *FAST, "WSPersistHealthCheck " + check))
    wait_until(lambda: len(env.httpd.children()) == 2, 20,
               what="two apache2 children")


def test_one_child_checks_and_every_child_sees_the_result(env):
    """With two children one runs the checks; a backend it finds down is
    out for clients of the other child too."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start_two(env, [b1, b2], "tcp interval=200ms timeout=200ms")
    wait_check(env, b1, "pass", "b1's first check")
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    b1.kill()
    wait_check(env, b1, "fail", "b1 down")
    assert len(checker_pids(env)) == 1, env.httpd.log_text()

    async def run():
        children, names = set(), []
        for _ in range(200):
            async with connect(env) as ws:
                names.append((await whoami(ws))["name"])
                children.add(child_of(env, ws))
            if len(children) == 2:
                break
        assert len(children) == 2, "every client went to one child"
        return names
    assert set(asyncio.run(run())) == {"b2"}
    assert not log_has(env, r"handshake failed|cannot connect")
    assert len(checker_pids(env)) == 1


def test_another_child_takes_over_when_the_checker_dies(env):
    """SIGKILL the child that runs the checks: another one takes the
    watchdog's lock and checks from then on (mod_watchdog waits up to
    10 s before a new holder runs)."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start_two(env, [b1, b2], "tcp interval=200ms timeout=200ms")
    wait_check(env, b1, "pass", "b1's first check")
    first, = checker_pids(env)
    env.expected_kills.add(first)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(checker_pids(env)) == 2, 60,
               what="another child running the checks")
    second = checker_pids(env)[1]
    assert second != first
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    b1.kill()
    wait_check(env, b1, "fail", "b1 down, seen by the new checker")
    assert re.search(r"\[pid %d:tid \d+\] ws_persist: health check \(tcp\) "
                     r"of backend %s" % (second, re.escape(b1.url)),
                     env.httpd.log_text())


def graceful(env, body):
    before = len(env.httpd.log_lines(r"resuming normal operations"))
    env.httpd.write_conf(MANAGER + body)
    env.httpd.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: len(env.httpd.log_lines(r"resuming normal operations"))
               > before, 30, what="the graceful restart")


def test_graceful_restart_keeps_a_verdict_and_drops_it_with_the_check(env):
    """A backend down by its check stays down through a graceful restart
    that keeps the check (no client tries it in between); a restart
    whose configuration has no check any more forgets the verdict."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    check = "WSPersistHealthCheck tcp interval=200ms timeout=200ms"
    start(env, [b1, b2], check[len("WSPersistHealthCheck "):])
    env.expect_warn(down_rx(b1, "tcp", "connect: Connection refused"))
    wait_check(env, b1, "pass", "b1's first check")
    b1.kill()
    wait_check(env, b1, "fail", "b1 down")

    graceful(env, env.location("/ws/", [b1, b2], *FAST, check))
    info = check_of(env, b1)
    assert info["state"] == "error" and info["check"]["result"] == "fail", \
        info
    assert served_by(env, 3) == ["b2"] * 3

    graceful(env, env.location("/ws/", [b1, b2], *FAST))
    info = check_of(env, b1)
    assert info["check"] is None and info["state"] == "ok", info


# --------------------------------------------------------------------------
# wss:// backends


def test_wss_checks_go_through_mod_ssl(env):
    """A ws check of wss:// backends speaks TLS with the SSLProxy*
    settings: a trusted backend passes, one whose certificate is not
    trusted fails at TLS, one whose TLS handshake never finishes is cut
    at the timeout; each is down before any client."""
    from test_wss_backend import HungServer, Pki, proxy_tls, tls_backend
    pki = Pki(env.root)
    good = tls_backend(env, "good", pki.good)
    rogue = tls_backend(env, "rogue", pki.rogue)
    hung = HungServer(env)
    env.expect_warn(down_rx(rogue, "ws", r"TLS handshake failed .*"))
    # mod_ssl's own word on the untrusted certificate, at every check
    env.expect_error(r"AH02039: Certificate Verification: Error \(20\)")
    env.expect_warn(down_rx(hung, "ws", r"no answer within 400 ms \(in the "
                            r"TLS handshake\)"))
    env.start_httpd(MANAGER + proxy_tls(pki) + env.location(
        "/ws/", [good, rogue, hung], *FAST,
        "WSPersistHealthCheck ws:/echo/ interval=500ms timeout=400ms"),
        ssl=True)
    wait_check(env, good, "pass", "the trusted backend passing")
    wait_check(env, rogue, "fail", "the untrusted backend failing")
    info = wait_check(env, hung, "fail", "the hung TLS backend cut")
    assert "TLS handshake" in info["check"]["reason"], info
    assert served_by(env, 3) == ["good"] * 3
    assert not log_has(env, r"ws_persist: client .* handshake failed")
