"""Failover (DESIGN §3): a backend dies under a live client, the pipe moves
on, buffers and replays, and the delivery guarantees hold."""

import asyncio

import pytest
import websockets

from wsp_env import (await_until, closed, connect, echo, hget, new_id, recv,
                     whoami)

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")

# After a SIGKILL the dead backend's socket has already sent its FIN; a
# message the proxy writes before it has read that FIN is "completely
# written to a backend that then fails" and may be lost (DESIGN §3). The
# tests give the proxy this long to notice before they count messages as
# sent "after the kill".
NOTICE_S = 0.1


def test_kill_with_spare_keeps_stream(env):
    """A numbered message every 10 ms; the client's backend is SIGKILLed
    with a spare up. The client stays connected; echoes are strictly
    increasing (in order, nothing twice) and every message sent after the
    kill comes back."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *FAST))
    backends = {"b1": b1, "b2": b2}

    async def run():
        ws = await connect(env)
        me = await whoami(ws)
        victim = backends[me["name"]]
        spare = b2 if victim is b1 else b1
        sent, got = [], []
        state = {}
        loop = asyncio.get_running_loop()

        async def sender():
            n = 0
            while True:
                n += 1
                final = "after" in state and loop.time() > state["after"] + 2
                if final:
                    state["last"] = n
                await ws.send(str(n))
                sent.append(n)
                if final:
                    return
                await asyncio.sleep(0.01)

        async def receiver():
            while "last" not in state or not got or got[-1] < state["last"]:
                try:
                    got.append(int(await recv(ws, 20)))
                except asyncio.TimeoutError:
                    return      # the assertions below say what is missing

        async def killer():
            await await_until(lambda: len(got) >= 30, 30,
                              what="30 echoes before the kill")
            victim.kill()
            await asyncio.sleep(NOTICE_S)
            state["kill_seq"] = sent[-1]
            state["after"] = loop.time()

        await asyncio.wait_for(
            asyncio.gather(sender(), receiver(), killer()), 60)
        kill_seq, last = state["kill_seq"], state["last"]
        assert last - kill_seq > 50, "the stream went on after the kill"
        dups = len(got) - len(set(got))
        assert dups == 0, "%d messages echoed twice" % dups
        assert got == sorted(got), "echoes out of order"
        missing = sorted(set(range(kill_seq + 1, last + 1)) - set(got))
        assert not missing, "sent after the kill (#%d), never echoed: %s" % (
            kill_seq, missing)
        assert ws.open
        me2 = await whoami(ws)
        assert me2["name"] == spare.name
        assert hget(me2["headers"], "X-WS-Persist-Resume") == "1"
        await ws.close()
    asyncio.run(run())


def test_only_backend_restarted_replays_buffer(env):
    """The only backend is killed and restarted on its port 1 s later:
    what the client sent during the outage is buffered and replayed, all
    of it, in order, once."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], *FAST))

    async def run():
        cid = new_id()
        ws = await connect(env, cid)
        await echo(ws, "before")
        loop = asyncio.get_running_loop()
        b1.kill()
        killed_at = loop.time()
        await asyncio.sleep(0.3)
        outage = ["outage-%d" % i for i in range(20)]
        for m in outage:
            await ws.send(m)
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, 1.0 - (loop.time() - killed_at)))
        assert not b1.alive
        await b1.astart()
        got = [await recv(ws, 30) for _ in outage]
        assert got == outage
        await echo(ws, "after")
        opens = b1.opens(cid)
        assert [hget(o["headers"], "X-WS-Persist-Resume") for o in opens] \
            == ["0", "1"]
        second_run = [m["head"] for m in b1.messages(cid)
                      if m["pid"] == opens[1]["pid"]]
        assert second_run == outage + ["after"]
        await ws.close()
    asyncio.run(run())


def test_no_backend_within_timeout_closes_1014(env):
    """The only backend dies and stays dead: after WSPersistConnectTimeout
    the client is closed with 1014 and the reason is logged."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistConnectTimeout 2",
                                 "WSPersistRetry 50ms 500ms"))

    async def run():
        cid = new_id()
        ws = await connect(env, cid)
        env.expect_error(cid)
        await echo(ws, "before")
        b1.kill()
        await asyncio.sleep(0.3)
        try:
            await ws.send("into the void")
        except websockets.ConnectionClosed:
            pass
        code, _ = await closed(ws, 60)
        assert code == 1014
        assert env.httpd.log_lines(cid), "the 1014 is logged with the id"
    asyncio.run(run())


@pytest.mark.alarm(200)
def test_hundred_clients_survive_kill(env):
    """100 clients spread over 2 backends, one backend SIGKILLed: all 100
    keep working."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *FAST))

    async def run():
        clients = await asyncio.gather(*(connect(env) for _ in range(100)))
        names = [(await whoami(ws))["name"] for ws in clients]
        assert names.count("b1") > 0 and names.count("b2") > 0, \
            "least-pipes selection spreads clients over both backends"
        await asyncio.gather(*(echo(ws, "hello-%d" % i)
                               for i, ws in enumerate(clients)))
        b1.kill()
        await asyncio.sleep(NOTICE_S)
        await asyncio.gather(*(echo(ws, "after-%d" % i, timeout=60)
                               for i, ws in enumerate(clients)))
        assert all(ws.open for ws in clients)
        after = [(await whoami(ws))["name"] for ws in clients]
        assert after == ["b2"] * 100
        await asyncio.gather(*(ws.close() for ws in clients))
    asyncio.run(run())
