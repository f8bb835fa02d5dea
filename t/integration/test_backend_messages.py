"""Backend → client (DESIGN §3): the client never sees a truncated,
interleaved or duplicated message; fragments are held until the last one;
a backend message over WSPersistMaxMessageSize is refused."""

import asyncio
import json

import websockets

from wsp_env import (RawWS, await_until, closed, connect, new_id, recv,
                     wait_until, whoami)


def test_fragmented_backend_message_arrives_whole(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    text = "".join("%04d" % i for i in range(5000))

    async def run():
        async with connect(env) as ws:
            await ws.send("frag:7:" + text)
            assert await recv(ws) == text
    asyncio.run(run())


def test_unfinished_backend_message_dropped_on_failover(env):
    """The backend sends the first fragment of a message and dies: the
    client gets no part of it; the first frame it sees afterwards is the
    whole answer of the next backend."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], "WSPersistRetry 5s 10s"))
    backends = {"b1": b1, "b2": b2}
    cid = new_id()
    env.expect_failover(cid)
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
        ws.send(RawWS.OP_TEXT, "whoami")
        fin, _, op, payload = ws.recv_frame()
        assert fin and op == RawWS.OP_TEXT
        first = backends[json.loads(payload)["name"]]
        other = b2 if first is b1 else b1

        ws.send(RawWS.OP_TEXT, "halfmsg:PARTIAL-" + cid)
        wait_until(lambda: any(e["ev"] == "sent-fragment"
                               for e in first.events()), 20,
                   what="the backend to send its first fragment")
        first.kill()
        wait_until(lambda: other.opens(cid), 20, what="failover")
        ws.send(RawWS.OP_TEXT, "whoami")
        frames = []
        while True:
            f = ws.recv_frame()
            assert f is not None, "connection ended"
            if f[2] in (RawWS.OP_PING, RawWS.OP_PONG):
                continue
            frames.append(f)
            if f[2] != RawWS.OP_CONT and f[0]:
                break
            if len(frames) > 3:
                break
        assert all(b"PARTIAL" not in f[3] for f in frames), frames
        assert len(frames) == 1, "the part message reached the client: %r" \
            % frames
        fin, rsv, op, payload = frames[0]
        assert fin and op == RawWS.OP_TEXT
        assert json.loads(payload)["name"] == other.name
    finally:
        ws.close()


def test_backend_message_over_limit_1009(env):
    """A backend message over WSPersistMaxMessageSize: the backend is closed
    with 1009, the client never receives the message and its session ends
    with 1009 too; it is not an interruption (the next backend would send
    it again), so no other backend is tried."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2],
                                 "WSPersistMaxMessageSize 1K",
                                 "WSPersistConnectTimeout 3"))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        be = b1 if me["name"] == "b1" else b2
        await ws.send("big:5000")
        code, reason = await closed(ws, 20)
        assert (code, reason) == (1009, "backend message too big")
        await await_until(lambda: be.closes(cid), 20,
                          what="the backend to be closed")
        assert be.closes(cid)[0]["code"] == 1009
        assert len(b1.opens(cid)) + len(b2.opens(cid)) == 1, \
            "another backend was tried"
    asyncio.run(run())
