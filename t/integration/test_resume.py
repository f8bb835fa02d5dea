"""Sessions that outlive the client's own connection (DESIGN §7,
WSPersistResumeWindow): a client connection that drops without a close
frame detaches the session; a new connection for the same id within the
window resumes it on the same backend connection and is sent every
backend message after the count it gives (X-WS-Persist-Received or the
wsp_received query parameter), exactly once and in order; a resume that
cannot be honoured is answered 101 and closed with 4410."""

import asyncio
import socket
import struct

import pytest
import websockets

from wsp_env import (await_until, closed, connect, echo, hget, new_id,
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
        abort(ws)
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
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
            abort(ws)
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
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
        abort(ws)
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
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
        abort(ws)
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
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
        abort(ws)
        await await_until(lambda: detached(env, c), 10,
                          what="detached line")
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
        abort(ws)
        await await_until(lambda: detached(env, cid), 10,
                          what="detached line")
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
