"""Draining a backend at run time (issue #3): its pipes move to another
backend at a message boundary while their clients stream; clients see no
error, nothing twice and nothing lost; the old backend gets 1001."""

import asyncio

from wsp_env import await_until, connect, recv, whoami
from wsp_manage import MANAGER, applied, backend_of, pool_of, state

FAST = ("WSPersistConnectTimeout 5", "WSPersistRetry 50ms 500ms")


def start(env, backends, *lines):
    env.start_httpd(MANAGER + env.location("/ws/", backends, *FAST, *lines))


async def clients_on(env, n, name):
    out = []
    for _ in range(n):
        ws = await connect(env)
        assert (await whoami(ws))["name"] == name
        out.append(ws)
    return out


async def stream(ws, until, sent, got):
    """Numbered messages every 10 ms until until() says stop, then "end":
    every echo is read, up to the echo of "end" (which comes after all of
    them, or the order is broken and check_stream says so)."""
    async def sender():
        n = 0
        while not until():
            n += 1
            await ws.send(str(n))
            sent.append(n)
            await asyncio.sleep(0.01)
        await ws.send("end")

    async def receiver():
        while True:
            m = await recv(ws, 30)
            if m == "end":
                return
            got.append(int(m))
    await asyncio.gather(sender(), receiver())


def check_stream(sent, got):
    assert len(got) == len(set(got)), "echoed twice: %r" % sorted(
        x for x in set(got) if got.count(x) > 1)
    assert got == sorted(got), "echoes out of order"
    missing = sorted(set(sent) - set(got))
    assert not missing, "never echoed: %s" % missing


async def drain_while_streaming(env, old, new, action):
    """Four clients stream on old; action is posted mid-stream; returns
    the clients once every echo is in."""
    clients = await clients_on(env, 4, old.name)
    applied(env, "enable", new.url)
    flags = {}
    sent = [[] for _ in clients]
    got = [[] for _ in clients]

    async def director():
        await await_until(lambda: all(len(g) >= 30 for g in got), 30,
                          what="30 echoes on every client")
        applied(env, action, old.url)

        def moved():
            b = backend_of(state(env), old.url)     # one look: it may go
            return b is None or b["pipes"] == 0
        await await_until(moved, 20, what="the old backend to lose its pipes")
        await asyncio.sleep(0.5)
        flags["stop"] = True

    await asyncio.wait_for(asyncio.gather(
        director(), *(stream(ws, lambda: "stop" in flags, s, g)
                      for ws, s, g in zip(clients, sent, got))), 90)
    for s, g in zip(sent, got):
        check_stream(s, g)
        assert len(s) > 60
    for ws in clients:
        assert ws.open, "a client was closed"
        assert (await whoami(ws))["name"] == new.name
    closes = old.closes()
    assert len(closes) == 4 and all(
        c["code"] == 1001 and c["by"] == "peer" for c in closes), closes
    return clients


def test_drain_moves_streaming_clients(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    applied(env, "disable", b2.url)     # every client starts on b1

    async def run():
        clients = await drain_while_streaming(env, b1, b2, "drain")
        info = backend_of(state(env), b1.url)
        assert info["state"] == "drained" and info["pipes"] == 0, info
        assert backend_of(state(env), b2.url)["pipes"] == 4
        ws = await connect(env)
        assert (await whoami(ws))["name"] == "b2", "no new pipe on b1"
        for c in clients + [ws]:
            await c.close()
    asyncio.run(run())


def test_remove_moves_clients_then_frees_the_slot(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    applied(env, "disable", b2.url)

    async def run():
        clients = await drain_while_streaming(env, b1, b2, "remove")
        await await_until(lambda: backend_of(state(env), b1.url) is None,
                          10, what="b1 to leave the list")
        # b1's slot is free: its URL can come back, as a backend added at
        # run time, and only that takes one of the pool's spare slots
        pool = pool_of(state(env))
        assert pool["free_slots"] == 16, pool
        doc = applied(env, "add", b1.url)
        assert pool_of(doc)["free_slots"] == 15, pool_of(doc)
        info = backend_of(doc, b1.url)
        assert info is not None and info["pipes"] == 0, info
        for c in clients:
            await c.close()
    asyncio.run(run())


def test_drain_waits_for_a_usable_backend(env):
    """With nowhere to go the pipes stay (draining) and keep working;
    once another backend is enabled they move."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    applied(env, "disable", b2.url)

    async def run():
        clients = await clients_on(env, 2, "b1")
        applied(env, "drain", b1.url)
        await asyncio.sleep(1.5)
        info = backend_of(state(env), b1.url)
        assert info["state"] == "draining" and info["pipes"] == 2, info
        for ws in clients:
            assert (await whoami(ws))["name"] == "b1"
        applied(env, "enable", b2.url)
        await await_until(lambda: backend_of(state(env), b1.url)["state"]
                          == "drained", 15, what="b1 drained")
        for ws in clients:
            assert (await whoami(ws))["name"] == "b2"
            await ws.close()
    asyncio.run(run())


def test_disable_keeps_existing_pipes(env):
    """disable takes a backend out for new pipes only."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    applied(env, "disable", b2.url)

    async def run():
        old = await clients_on(env, 2, "b1")
        applied(env, "enable", b2.url)
        applied(env, "disable", b1.url)
        new = await clients_on(env, 3, "b2")
        await asyncio.sleep(1.5)        # longer than a drain check
        for ws in old:
            assert (await whoami(ws))["name"] == "b1"
        info = backend_of(state(env), b1.url)
        assert info["state"] == "disabled" and info["pipes"] == 2, info
        assert b1.closes() == []
        for ws in old + new:
            await ws.close()
    asyncio.run(run())
