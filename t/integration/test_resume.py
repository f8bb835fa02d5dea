"""Sessions that outlive the client's own connection (DESIGN §7,
WSPersistResumeWindow): a client connection that drops without a close
frame detaches the session; a new connection for the same id within the
window resumes it on the same backend connection and is sent every
backend message after the count it gives (X-WS-Persist-Received or the
wsp_received query parameter), exactly once and in order; a resume that
cannot be honoured is answered 101 and closed with 4410."""

import asyncio
import re
import socket
import ssl
import struct

import pytest
import websockets

from wsp_env import (HOST, await_until, closed, connect, echo, hget, new_id,
                     recv, wait_until, whoami)

WINDOW = "WSPersistResumeWindow 30"


def abort(ws, reset=True):
    """Drop the client's TCP connection without a close frame: a reset
    (SO_LINGER 0), or a FIN."""
    sock = ws.transport.get_extra_info("socket")
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    ws.transport.abort()


def resume(env, cid, n=None, how="header", **kw):
    """Connect for cid, giving the count n of messages received."""
    if n is None:
        return connect(env, cid, **kw)
    if how == "header":
        return connect(env, cid, extra_headers={
            "X-WS-Persist-Received": str(n)}, **kw)
    return connect(env, cid, query="wsp_received=%d" % n, **kw)


def session_of(ws):
    return hget(ws.response_headers, "X-WS-Persist-Session")


async def take(ws, k, timeout=20):
    return [await recv(ws, timeout) for _ in range(k)]


def counted(i):
    return "c%d" % i


def detached(env, cid):
    return env.httpd.log_lines(r"client %s .*session detached" % cid)


async def drop(env, ws, cid):
    """Reset the client's connection and wait for the proxy's word that
    the session is detached."""
    abort(ws)
    await await_until(lambda: detached(env, cid), 10, what="detached line")


@pytest.mark.parametrize("how", ["header", "query"])
def test_exact_replay_after_abort(env, how):
    """The client reads 20 of 200 counted messages, its connection is
    reset; the backend goes on sending into the detached session. The
    resumed connection, giving 20, gets c21..c200 exactly once and in
    order, from the same backend connection, which never saw a close."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        assert session_of(ws) == "new"
        await ws.send("count:200:2")
        got = await take(ws, 20)
        await drop(env, ws, cid)
        await asyncio.sleep(0.2)
        async with resume(env, cid, 20, how) as ws2:
            assert session_of(ws2) == "resumed"
            got += await take(ws2, 180)
            await echo(ws2, "after")
        return got

    got = asyncio.run(run())
    assert got == [counted(i) for i in range(1, 201)]
    assert len(a.opens(cid)) == 1
    wait_until(lambda: a.closes(cid), 10, what="the backend's close")
    assert [c["code"] for c in a.closes(cid)] == [1000]
    assert env.httpd.log_lines(r"client %s .*session resumed: the client "
                               r"received 20 message\(s\)" % cid)


def test_resume_count_never_reaches_the_backend(env):
    """The query form of the count is the proxy's: backends see the rest
    of the query, never wsp_received."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        async with connect(env, cid, query="x=1") as ws:
            await ws.send("count:3:0")
            await take(ws, 3)
            await drop(env, ws, cid)
        async with connect(env, cid, query="x=2&wsp_received=3&y=3") as ws2:
            assert session_of(ws2) == "resumed"
            me = await whoami(ws2)
        return me

    me = asyncio.run(run())
    assert "wsp_received" not in me["path"]
    assert me["path"].endswith("?x=1")      # the first request's
    # a failover carries the resuming request's query, still without it
    assert "wsp_received" not in a.opens(cid)[0]["path"]


def test_window_over_ends_the_session(env):
    """No resume within the window: the backend gets 1001, and a late
    resume is answered 101 and closed with 4410."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], "WSPersistResumeWindow 1"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await ws.send("count:5:0")
        await take(ws, 5)
        abort(ws, reset=False)
        await await_until(lambda: a.closes(cid), 10,
                          what="the backend's close after the window")
        async with resume(env, cid, 5) as ws2:
            return await closed(ws2)

    assert asyncio.run(run()) == (4410, "session gone")
    assert [c["code"] for c in a.closes(cid)] == [1001]
    assert env.httpd.log_lines(r"client %s .*detached session ends "
                               r"\(resume window over\)" % cid)


def test_clean_close_ends_the_session(env):
    """A close frame from the client ends the session at once, as without
    a window: the backend gets the close, and a resume gets 4410."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        async with connect(env, cid) as ws:
            await echo(ws, "hi")
        await await_until(lambda: a.closes(cid), 10, what="backend close")
        async with resume(env, cid, 1) as ws2:
            return await closed(ws2)

    assert asyncio.run(run()) == (4410, "session gone")
    assert [c["code"] for c in a.closes(cid)] == [1000]
    assert not detached(env, cid)


def test_unknown_session_with_count_gets_4410(env):
    """A count for an id no session has: 4410, and no session is made;
    without a count the same id is simply a new session."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        async with resume(env, cid, 0, "query") as ws:
            res = await closed(ws)
        async with connect(env, cid) as ws2:
            assert session_of(ws2) == "new"
            await echo(ws2, "fresh")
        return res

    assert asyncio.run(run()) == (4410, "session gone")
    assert len(a.opens(cid)) == 1


def test_gap_beyond_resume_buffer_gets_4410(env):
    """Written messages are kept within WSPersistResumeBuffer, oldest
    dropped first: a resume that needs a dropped one gets 4410, and the
    session ends (backend 1001)."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW,
                                 "WSPersistResumeBuffer 16K"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await ws.send("count:100:0:1000")
        got = await take(ws, 100)
        await drop(env, ws, cid)
        async with resume(env, cid, 1) as ws2:
            res = await closed(ws2)
        return got, res

    got, res = asyncio.run(run())
    assert len(got) == 100
    assert res == (4410, "session gone")
    wait_until(lambda: a.closes(cid), 10, what="the backend's close")
    assert [c["code"] for c in a.closes(cid)] == [1001]
    assert env.httpd.log_lines(r"client %s .*resume refused: message 2 is "
                               r"no longer kept" % cid)


def test_count_beyond_what_was_sent_gets_4410(env):
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "one")
        await drop(env, ws, cid)
        async with resume(env, cid, 5) as ws2:
            return await closed(ws2)

    assert asyncio.run(run()) == (4410, "session gone")
    assert env.httpd.log_lines(r"client %s .*says it received 5 message"
                               % cid)


def test_client_acks_free_kept_messages(env):
    """A client that sends the pong wsp-ack:N frees 1..N at once: a resume
    that asks for them again cannot be honoured (4410), one after N is."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid, cid2 = new_id(), new_id()

    async def run(c, ack, count):
        ws = await connect(env, c)
        await ws.send("count:10:0")
        await take(ws, 10)
        if ack:
            await ws.pong(b"wsp-ack:8")
            await echo(ws, "acked")
        else:
            await echo(ws, "not acked")
        await drop(env, ws, c)
        async with resume(env, c, count) as ws2:
            if not ack:
                first = await recv(ws2)
                await ws2.close()
                return first
            return await closed(ws2)

    assert asyncio.run(run(cid, False, 5)) == "c6"
    assert asyncio.run(run(cid2, True, 5)) == (4410, "session gone")
    assert env.httpd.log_lines(r"client %s .*resume refused: message 6 is "
                               r"no longer kept" % cid2)


def test_half_open_connection_is_taken_over(env):
    """A resume while the old connection still looks alive takes it over,
    as replace does: the old one gets 1008, the new one everything after
    its count. WSPersistDuplicateClient stays reject: a connection
    without a count for that live id still gets 409."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        old = await connect(env, cid)
        await old.send("count:10:0")
        await take(old, 4)
        try:
            await connect(env, cid)
            raise AssertionError("a second connection without a count "
                                 "was accepted")
        except websockets.InvalidStatusCode as e:
            assert e.status_code == 409
        async with resume(env, cid, 4) as ws2:
            assert session_of(ws2) == "resumed"
            rest = await take(ws2, 6)
            code = await closed(old)
        return rest, code

    rest, code = asyncio.run(run())
    assert rest == [counted(i) for i in range(5, 11)]
    assert code[0] == 1008


def test_resume_must_offer_the_pinned_subprotocol(env):
    a = env.backend("a", subprotocols=["chat", "v2"])
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        ws = await connect(env, cid, subprotocols=["chat"])
        assert ws.subprotocol == "chat"
        await echo(ws, "x")
        await drop(env, ws, cid)
        try:
            await resume(env, cid, 1, subprotocols=["v2"])
            raise AssertionError("a resume with another subprotocol was "
                                 "accepted")
        except websockets.InvalidStatusCode as e:
            assert e.status_code == 400
        async with resume(env, cid, 1, subprotocols=["chat"]) as ws2:
            assert ws2.subprotocol == "chat"
            await echo(ws2, "y")

    asyncio.run(run())


def test_bad_count_is_refused(env):
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))

    async def run():
        for extra in ({"extra_headers": {"X-WS-Persist-Received": "x1"}},
                      {"query": "wsp_received=1&wsp_received=2"},
                      {"query": "wsp_received=1",
                       "extra_headers": {"X-WS-Persist-Received": "1"}}):
            try:
                await connect(env, new_id(), **extra)
                raise AssertionError("accepted: %r" % extra)
            except websockets.InvalidStatusCode as e:
                assert e.status_code == 400

    asyncio.run(run())


def test_detached_session_past_the_buffer_limit_ends(env):
    """While detached, what is kept for the client counts against
    WSPersistBufferLimit: past it the session ends (backend 1001) and a
    resume gets 4410, instead of the proxy holding without bound."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW,
                                 "WSPersistBufferLimit 256K"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await ws.send("count:2000:0:1000")        # 2 MB
        await recv(ws)
        abort(ws)
        await await_until(lambda: a.closes(cid), 20,
                          what="the backend's close")
        async with resume(env, cid, 1) as ws2:
            return await closed(ws2)

    assert asyncio.run(run()) == (4410, "session gone")
    assert [c["code"] for c in a.closes(cid)] == [1001]
    assert env.httpd.log_lines(r"client %s .*detached session ends "
                               r"\(messages kept for the client passed "
                               r"WSPersistBufferLimit\)" % cid)


def test_failover_while_detached(env):
    """The backend dies while the session is detached: the session fails
    over without its client, and the resume gets what the dead backend
    had sent before (kept), then live traffic from the spare."""
    a, b = env.backend("a"), env.backend("b")
    env.start_httpd(env.location("/ws/", [a, b], WINDOW,
                                 "WSPersistRetry 50ms 500ms"))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        ws = await connect(env, cid)
        await ws.send("count:50:0")
        got = await take(ws, 10)
        await await_until(lambda: a.events("counted"), 10, what="all sent")
        await drop(env, ws, cid)
        await asyncio.sleep(0.3)             # the proxy has read them all
        a.kill()
        await await_until(lambda: b.opens(cid), 10,
                          what="the spare's connection")
        async with resume(env, cid, 10) as ws2:
            got += await take(ws2, 40)
            me = await whoami(ws2)
        return got, me

    got, me = asyncio.run(run())
    assert got == [counted(i) for i in range(1, 51)]
    assert me["name"] == "b"


def test_resume_forwards_the_new_request_headers(env):
    """The resuming request's Cookie, Authorization and X-Forwarded-*
    replace the first one's for later backend handshakes."""
    a, b = env.backend("a"), env.backend("b")
    env.start_httpd(env.location("/ws/", [a, b], WINDOW,
                                 "WSPersistRetry 50ms 500ms"))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        ws = await connect(env, cid, extra_headers={"Cookie": "s=old",
                                                    "Authorization": "A"})
        await echo(ws, "x")
        await drop(env, ws, cid)
        async with connect(env, cid, extra_headers={
                "X-WS-Persist-Received": "1", "Cookie": "s=new",
                "Authorization": "B"}) as ws2:
            assert session_of(ws2) == "resumed"
            first = (await whoami(ws2))["headers"]
            a.kill()
            await await_until(lambda: b.opens(cid), 10, what="failover")
            second = (await whoami(ws2))["headers"]
        return first, second

    first, second = asyncio.run(run())
    assert first["Cookie"] == "s=old"          # the same connection
    assert second["Cookie"] == "s=new"
    assert second["Authorization"] == "B"


def test_resume_without_count_sends_what_was_not_written(env):
    """Without a count the proxy sends again only what it had not
    completely written to the old connection (its log says from which
    message): here the client stopped reading, so much was not."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW,
                                 "WSPersistBufferLimit 32M"))
    cid = new_id()

    async def run():
        # a small receive buffer: the kernels hold little of the 8 MB
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, env.httpd.port))
        ws = await connect(env, cid, sock=sock)
        await ws.send("count:200:0:40000")
        first = await recv(ws)
        ws.transport.pause_reading()
        await asyncio.sleep(0.5)
        await drop(env, ws, cid)
        async with resume(env, cid) as ws2:
            assert session_of(ws2) == "resumed"
            rest = []
            while not rest or not rest[-1].startswith("c200."):
                rest.append(await recv(ws2))
        return first, rest

    first, rest = asyncio.run(run())
    nums = [int(m.split(".")[0][1:]) for m in rest]
    assert nums == list(range(nums[0], 201)), "not one run up to c200"
    lines = env.httpd.log_lines(r"client %s .*session resumed without a "
                                r"count: (\d+) message\(s\) not completely "
                                r"written before sent again \(from (\d+)\)"
                                % cid)
    assert len(lines) == 1
    m = re.search(r"count: (\d+) .*\(from (\d+)\)", lines[0])
    assert int(m.group(1)) == len(rest) and int(m.group(2)) == nums[0]
    assert nums[0] > 1


def test_wss_client_resumes(env):
    """The same exact replay over wss:// (mod_ssl on the client hop)."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW), ssl=True)
    ctx = ssl.create_default_context(cafile=str(env.make_cert()))
    cid = new_id()

    async def run():
        ws = await connect(env, cid, scheme="wss", ssl=ctx)
        await ws.send("count:100:1")
        got = await take(ws, 30)
        await drop(env, ws, cid)
        async with resume(env, cid, 30, scheme="wss", ssl=ctx) as ws2:
            got += await take(ws2, 70)
        return got

    assert asyncio.run(run()) == [counted(i) for i in range(1, 101)]


def test_stop_ends_detached_sessions(env):
    """A server stopping closes a detached session's backend with 1001,
    as it does a live pipe's."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "x")
        await drop(env, ws, cid)

    asyncio.run(run())
    env.httpd.stop()
    wait_until(lambda: a.closes(cid), 10, what="the backend's close")
    assert [c["code"] for c in a.closes(cid)] == [1001]


def test_resume_in_another_child_gets_4410(env):
    """The registry is per child: a resume that another child accepts
    gets 4410 from it and makes no second session; the session stays
    detached in its child, where a later resume still finds it."""
    from wsp_manage import TWO_CHILDREN, child_of
    a = env.backend("a")
    env.start_httpd(TWO_CHILDREN + env.location("/ws/", [a], WINDOW))
    wait_until(lambda: len(env.httpd.children()) == 2, 20,
               what="two apache2 children")
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "m")
        home, n, other, resumed_after = child_of(env, ws), 1, None, False
        await drop(env, ws, cid)
        for _ in range(200):
            ws2 = await resume(env, cid, n)
            if session_of(ws2) != "resumed":
                # the other child: it has no such session
                other = await closed(ws2)
                continue
            assert child_of(env, ws2) == home
            # at home: resumed; one more message, and detached again
            await echo(ws2, "m")
            n += 1
            resumed_after = other is not None
            abort(ws2)
            await await_until(lambda: len(detached(env, cid)) == n, 10,
                              what="detached again")
            if resumed_after:
                break
        return other, resumed_after

    other, resumed_after = asyncio.run(run())
    assert other == (4410, "session gone")
    assert resumed_after, "no resume at home after the other child's 4410"
    assert env.httpd.log_lines(r"client %s .*resume refused \(no such "
                               r"session in this process\)" % cid)
    assert len(a.opens(cid)) == 1


def test_reset_and_resume_at_once_again_and_again(env):
    """A client that resets its connection and comes back at once, before
    the proxy has seen the reset: the resume takes the half-open
    connection over (its 1008 cannot be written, which must not end the
    session), 60 times in a row, every message once and in order."""
    a = env.backend("a")
    env.start_httpd(env.location("/ws/", [a], WINDOW))
    cid = new_id()

    async def run():
        ws = await connect(env, cid, max_queue=None)
        await ws.send("count:100000:1")
        n = 0
        for i in range(60):
            for _ in range(20):
                n += 1
                assert await recv(ws, 10) == counted(n), (i, n)
            abort(ws)
            try:
                while True:                 # what had arrived already
                    m = await ws.recv()
                    n += 1
                    assert m == counted(n), (i, n)
            except websockets.ConnectionClosed:
                pass
            ws = await resume(env, cid, n, max_queue=None)
            assert session_of(ws) == "resumed", i
        await ws.close()
        return n

    assert asyncio.run(run()) >= 1200
    assert not env.httpd.log_lines(r"client %s .*resume refused" % cid)
    assert len(a.opens(cid)) == 1


def test_resume_while_the_old_backend_retires(env):
    """The session moves off a draining backend and its client drops
    while the old backend still sends its last messages: the resume
    keeps that retiring connection (its frames are the pipe's), which
    delivers them and gets its 1001; nothing is cut, every message
    arrives once and in order."""
    from wsp_manage import MANAGER, applied
    a, b = env.backend("a"), env.backend("b")
    env.start_httpd(MANAGER + env.location("/ws/", [a, b], WINDOW,
                                           "WSPersistConnectTimeout 5"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid, max_queue=None)
        me = await whoami(ws)
        old = a if me["name"] == "a" else b
        await ws.send("count:400:10")
        got = [await recv(ws) for _ in range(20)]
        old.pause()                 # its last messages wait in it
        applied(env, "drain", old.url)
        await await_until(lambda: env.httpd.log_lines(
            r"client %s .*moved off draining backend" % cid), 15,
            what="the switch to the replacement")
        abort(ws)
        try:
            while True:
                got.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
        # the count is of every backend message, the whoami answer too
        async with resume(env, cid, len(got) + 1, max_queue=None) as ws2:
            assert session_of(ws2) == "resumed"
            old.resume()
            await await_until(lambda: old.closes(cid), 15,
                              what="the old backend's close")
            await asyncio.sleep(0.3)
            while True:
                try:
                    got.append(await asyncio.wait_for(ws2.recv(), 0.5))
                except asyncio.TimeoutError:
                    break
        return old, got

    old, got = asyncio.run(run())
    assert got == [counted(i) for i in range(1, len(got) + 1)]
    assert len(got) > 20
    assert [c["code"] for c in old.closes(cid)] == [1001]
    assert env.httpd.log_lines(r"client %s .*draining backend %s let go "
                               r"\(closed\)" % (cid, re.escape(old.url)))
