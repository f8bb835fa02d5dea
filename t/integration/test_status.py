"""The ws_persist section of mod_status's /server-status page and of its
?auto form (the format is documented in mod_ws_persist/wsp_status.c)."""

import asyncio
import http.client
import re
import socket
import struct

from wsp_env import (HOST, MODDIR, await_until, connect, echo,
                     interruptions, new_id, whoami)

STATUS = """\
LoadModule status_module {moddir}/mod_status.so
ExtendedStatus On
<Location "/server-status">
    SetHandler server-status
</Location>
""".format(moddir=MODDIR)


def start(env, backends, extra="", lines=()):
    env.start_httpd(STATUS + env.location("/ws/", backends,
                                          "WSPersistConnectTimeout 5",
                                          "WSPersistRetry 50ms 500ms",
                                          *lines)
                    + extra)


def get(env, path):
    conn = http.client.HTTPConnection(HOST, env.httpd.port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
        return body
    finally:
        conn.close()


def key(s):
    """A pool or URL as the ?auto keys write it."""
    return re.sub(r"[%\[\]: ]", lambda m: "%%%02X" % ord(m.group()), s)


def auto(env):
    """The ws_persist lines of the ?auto page as {key: value}; fails on
    one that is not "key: value", whose key holds a ':', or whose key
    came before."""
    out = {}
    for line in get(env, "/server-status?auto").splitlines():
        if not line.startswith("WSPersist"):
            continue        # mod_status's own
        k, sep, v = line.partition(": ")
        assert sep, "not a key: value line: %r" % line
        assert ":" not in k, "a key holds ':': %r" % line
        assert k not in out, "key %r given twice" % k
        out[k] = v
    return out


def fields(value):
    """'state=ok pipes=2 ...' as a dict, numbers as ints."""
    out = {}
    for word in value.split():
        k, _, v = word.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def backend_line(lines, url, pool="/ws/"):
    return fields(lines["WSPersistBackend[%s][%s]" % (key(pool), key(url))])


def test_html_section_lists_backends_and_pipes(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])

    async def run():
        clients = [await connect(env) for _ in range(3)]
        names = [(await whoami(ws))["name"] for ws in clients]
        page = get(env, "/server-status")
        assert "<h2>ws_persist</h2>" in page
        assert "<h3>Pool /ws/</h3>" in page
        m = re.search(r"Live pipes in the child that answered this request "
                      r"\(pid (\d+)\): (\d+)\.", page)
        assert m and int(m.group(2)) == 3, "one child holds all 3 pipes"
        assert int(m.group(1)) in env.httpd.children()
        for be in (b1, b2):
            row = re.search(r"<tr><td>%s</td><td>(\w+)</td><td>\d+</td>"
                            r"<td>(\d+)</td><td>(\d+)</td>"
                            % re.escape(be.url), page)
            assert row, page
            assert row.group(1) == "ok"
            assert int(row.group(2)) == names.count(be.name), "live pipes"
            assert int(row.group(3)) == names.count(be.name), "served"
        for ws in clients:
            await ws.close()
    asyncio.run(run())


def test_auto_lines_count_pipes(env):
    """?auto: the child's pipes, the pool's and each backend's, as the
    clients open and close."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])

    async def run():
        clients = [await connect(env) for _ in range(4)]
        names = [(await whoami(ws))["name"] for ws in clients]
        lines = auto(env)
        assert int(lines["WSPersistProcessPid"]) in env.httpd.children()
        assert lines["WSPersistProcessPipes"] == "4"
        assert lines["WSPersistPools"] == "1"
        assert fields(lines["WSPersistPool[/ws/]"]) == {
            "pipes": 4, "free_slots": 16, "backends": 2, "detached": 0,
            "resumed": 0, "expired": 0}
        for be in (b1, b2):
            f = backend_line(lines, be.url)
            assert f["state"] == "ok"
            assert f["pipes"] == names.count(be.name)
            assert f["served"] == names.count(be.name)
        await clients[0].close()
        await await_until(
            lambda: auto(env)["WSPersistProcessPipes"] == "3", 20,
            what="the closed pipe counted out")
        lines = auto(env)
        assert fields(lines["WSPersistPool[/ws/]"])["pipes"] == 3
        for ws in clients[1:]:
            await ws.close()
    asyncio.run(run())


def test_auto_backend_line_format(env):
    """Every documented field, in order, for the pool and each configured
    backend; the URL's ':' written %3A so the key holds none."""
    b1 = env.backend("b1")
    start(env, [b1])
    text = get(env, "/server-status?auto")
    rx = (r"^WSPersistBackend\[/ws/\]\[ws%%3A//%s%%3A%d/echo/\]: "
          r"state=ok weight=1 pipes=0 served=0 failovers=0 errors=0 "
          r"consecutive_errors=0 bytes_in=0 bytes_out=0 added=0 removing=0 "
          r"check=none check_at=0$"
          % (re.escape(HOST), b1.port))
    assert re.search(rx, text, re.M), text
    assert re.search(r"^WSPersistPool\[/ws/\]: pipes=0 free_slots=16 "
                     r"backends=1 detached=0 resumed=0 expired=0$", text,
                     re.M), text
    auto(env)    # every line parses, no key twice


def test_auto_counts_bytes_and_failovers(env):
    """Bytes relayed each way and a failover show on the backends'
    lines."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    backends = {"b1": b1, "b2": b2}

    async def run():
        ws = await connect(env)
        victim = backends[(await whoami(ws))["name"]]
        env.expect_failover(backend=victim, messages="0")
        await echo(ws, "x" * 1000)
        f = backend_line(auto(env), victim.url)
        assert f["bytes_out"] >= 1000 + len("whoami")
        assert f["bytes_in"] >= 1000
        victim.kill()
        await await_until(lambda: interruptions(env) == 1, 30,
                          what="the proxy to see the kill")
        await echo(ws, "after the kill")
        lines = auto(env)
        f = backend_line(lines, victim.url)
        assert f["failovers"] == 1
        assert f["errors"] >= 1 and f["state"] == "error"
        other = b2 if victim is b1 else b1
        assert backend_line(lines, other.url)["pipes"] == 1
        await ws.close()
    asyncio.run(run())


def test_auto_escapes_pool_names(env):
    """A location path with brackets, a colon and a space stays one key,
    %-escaped."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    odd = "/a[1]:b c/"
    start(env, [b1], extra=(
        '<Location "%s">\n    SetHandler ws-persist\n'
        '    WSPersistBackend %s\n</Location>\n' % (odd, b2.url)))
    lines = auto(env)
    assert "WSPersistPool[/a%5B1%5D%3Ab%20c/]" in lines
    assert backend_line(lines, b2.url, odd)["state"] == "ok"


# --------------------------------------------------------------------------
# Sessions that outlive the client's connection (WSPersistResumeWindow)


def abort(ws):
    """Reset the client's TCP connection: no close frame."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    ws.transport.abort()


def pool_line(env):
    return fields(auto(env)["WSPersistPool[/ws/]"])


def sessions(f):
    return {k: f[k] for k in ("detached", "resumed", "expired")}


def html_sessions(env):
    """The pool's figures as the HTML section's line under its heading
    says them."""
    m = re.search(r"<h3>Pool /ws/</h3>\n<p>Live pipes: (\d+)\. Sessions "
                  r"without their client: (\d+) detached now, (\d+) "
                  r"resumed, (\d+) expired\. ", get(env, "/server-status"))
    assert m, "no pool line with the session figures"
    return {"pipes": int(m.group(1)), "detached": int(m.group(2)),
            "resumed": int(m.group(3)), "expired": int(m.group(4))}


def test_detached_and_resumed_sessions_are_counted(env):
    """A session whose client connection is reset counts as detached
    (its pipe still lives); the resume takes it back to 0 detached and 1
    resumed, in ?auto and in the HTML section alike."""
    b1 = env.backend("b1")
    start(env, [b1], lines=["WSPersistResumeWindow 30"])
    cid = new_id()

    async def run():
        assert sessions(pool_line(env)) == {
            "detached": 0, "resumed": 0, "expired": 0}
        ws = await connect(env, cid)
        await echo(ws, "one")
        abort(ws)
        await await_until(lambda: pool_line(env)["detached"] == 1, 20,
                          what="the session counted detached")
        f = pool_line(env)
        assert sessions(f) == {"detached": 1, "resumed": 0, "expired": 0}
        assert f["pipes"] == 1, "a detached session keeps its pipe"
        assert html_sessions(env) == {"pipes": 1, "detached": 1,
                                      "resumed": 0, "expired": 0}
        async with connect(env, cid, extra_headers={
                "X-WS-Persist-Received": "1"}) as ws2:
            await echo(ws2, "two")
            assert sessions(pool_line(env)) == {
                "detached": 0, "resumed": 1, "expired": 0}
            assert html_sessions(env) == {"pipes": 1, "detached": 0,
                                          "resumed": 1, "expired": 0}
    asyncio.run(run())
    assert env.httpd.log_lines(r"client %s .*session resumed" % cid)


def test_expired_sessions_are_counted(env):
    """A detached session whose window runs out ends: expired 1,
    detached 0, its pipe gone."""
    b1 = env.backend("b1")
    start(env, [b1], lines=["WSPersistResumeWindow 1"])
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "one")
        abort(ws)
        await await_until(lambda: b1.closes(cid), 20,
                          what="the backend's close after the window")
        await await_until(lambda: pool_line(env)["expired"] == 1, 20,
                          what="the session counted expired")
        f = pool_line(env)
        assert sessions(f) == {"detached": 0, "resumed": 0, "expired": 1}
        assert html_sessions(env)["expired"] == 1
        await await_until(lambda: pool_line(env)["pipes"] == 0, 20,
                          what="the expired session's pipe counted out")
    asyncio.run(run())
    assert [c["code"] for c in b1.closes(cid)] == [1001]
