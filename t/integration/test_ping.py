"""WSPersistPingInterval (DESIGN §1): the proxy pings a quiet hop; a peer
that does not answer within another interval is dead (backend: fail over;
client: close)."""

import asyncio

from wsp_env import (RawWS, await_until, connect, echo, hget, new_id,
                     wait_until, whoami)


def test_silent_backend_fails_over(env):
    """The client's backend is SIGSTOPped (its TCP connection stays up, it
    answers nothing): the missing pong makes the pipe fail over."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], "WSPersistPingInterval 1",
                                 "WSPersistRetry 5s 10s"))
    backends = {"b1": b1, "b2": b2}
    cid = new_id()
    env.expect_warn(r"client %s .* backend interrupted \(no pong\); failing "
                    r"over with 0 message\(s\), 0 byte\(s\) buffered$" % cid)

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        stuck = backends[me["name"]]
        other = b2 if stuck is b1 else b1
        stuck.pause()
        try:
            # nothing is sent meanwhile: a message written to the stopped
            # backend would count as delivered (DESIGN §3)
            await await_until(lambda: other.opens(cid), 30,
                              what="failover to %s" % other.name)
            me2 = await whoami(ws)
            assert me2["name"] == other.name
            assert hget(me2["headers"], "X-WS-Persist-Resume") == "1"
            await echo(ws, "after the silent backend")
        finally:
            stuck.kill()
        await ws.close()
    asyncio.run(run())


def test_answering_client_stays(env):
    """The control: a client that answers pings (websockets does) and a
    backend that answers them keep the pipe over several intervals."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistPingInterval 1"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "hello")
        await asyncio.sleep(3.5)
        await echo(ws, "still here")
        assert len(b1.opens(cid)) == 1
        await ws.close()
    asyncio.run(run())


def test_silent_client_is_closed(env):
    """A raw client that reads but never answers the proxy's ping: the
    proxy pings it, gives up, and the pipe ends (the backend is closed)."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistPingInterval 1"))
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid, timeout=30)
    try:
        assert ws.handshake().status == 101
        ws.send(RawWS.OP_TEXT, "hello")
        assert ws.recv_frame()[2:] == (RawWS.OP_TEXT, b"hello")
        code, reason, before = ws.recv_close(timeout=30)
        assert RawWS.OP_PING in [f[2] for f in before], \
            "the proxy pinged the quiet client"
        # a peer that does not answer is dead: dropped, no close frame
        assert code is None, \
            "the dead client got a close frame: %r %r" % (code, reason)
    finally:
        ws.close()
    closes = wait_until(lambda: b1.closes(cid), 30,
                        what="the backend to be closed")
    assert [(c["code"], c["reason"], c["by"]) for c in closes] == \
        [(1001, "client went away", "peer")], closes


def test_backend_behind_a_slow_client_is_not_failed(env):
    """A client that stops reading for 4 s (it keeps sending, so it is
    alive) fills its output, and the proxy stops reading the backend: the
    backend's pongs wait unread behind its messages. A backend the pipe
    does not read cannot be held to a pong: it is not failed over, and
    everything reaches the client once it reads again."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistPingInterval 1"))
    cid = new_id()
    n, size = 30, 200000

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "hello")
        ws.transport.pause_reading()
        for _ in range(n):
            await ws.send("big:%d" % size)
        ticks = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 4
        while loop.time() < until:
            await ws.send("tick")
            ticks += 1
            await asyncio.sleep(0.2)
        ws.transport.resume_reading()
        got = [await asyncio.wait_for(ws.recv(), 20)
               for _ in range(n + ticks)]
        assert got[:n] == ["b" * size] * n
        assert got[n:] == ["tick"] * ticks
        me = await whoami(ws)
        assert me["conn"] == 1 and len(b1.opens(cid)) == 1, \
            "the backend connection was replaced"
        await ws.close()
    asyncio.run(run())
