"""Failover (DESIGN §3): a backend dies under a live client, the pipe moves
on, buffers and replays, and the delivery guarantees hold."""

import asyncio
import re

import pytest
import websockets

from wsp_env import (await_until, closed, connect, echo, hget, new_id, recv,
                     whoami)

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def interrupted_ids(env):
    """The client ids whose backend the proxy has logged interrupted."""
    return set(re.findall(r"ws_persist: client (\S+) .* backend interrupted ",
                          env.httpd.log_text()))


def interrupted(env, cid):
    return cid in interrupted_ids(env)


def test_kill_with_spare_keeps_stream(env):
    """A numbered message every 10 ms; the client's backend is SIGKILLed
    with a spare up. The client stays connected, and every message it
    sent, before the kill and after it, comes back exactly once and in
    order, except those the killed backend had whole (it logged them, or
    they were found in its socket) and did not echo (DESIGN 3); a message
    it got only in part is replayed whole to the spare."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *FAST))
    backends = {"b1": b1, "b2": b2}
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        victim = backends[me["name"]]
        spare = b2 if victim is b1 else b1
        env.expect_refused(victim, cid)     # should the pool try it again
        sent, got = [], []
        state = {}
        loop = asyncio.get_running_loop()

        async def sender():
            n = 0
            while True:
                n += 1
                final = "after" in state and loop.time() > state["after"] + 2
                await ws.send(str(n))
                sent.append(n)
                if final:
                    state["last"] = n
                    return
                await asyncio.sleep(0.01)

        async def receiver():
            while "last" not in state or str(state["last"]) not in got:
                got.append(await recv(ws, 30))

        async def killer():
            await await_until(lambda: len(got) >= 30, 30,
                              what="30 echoes before the kill")
            state["remains"] = victim.kill_keeping_sockets()
            state["kill_seq"] = sent[-1]
            state["after"] = loop.time()

        await asyncio.wait_for(
            asyncio.gather(sender(), receiver(), killer()), 90)
        kill_seq, last = state["kill_seq"], state["last"]
        lost_ok, partial = await asyncio.to_thread(
            victim.lost_with, cid, state["remains"])
        print("kill after #%d, lost as allowed: %s, cut: %s" % (
            kill_seq, lost_ok, partial))
        nums = [int(m) for m in got]
        assert got == [str(n) for n in nums], "a message not sent, or cut"
        dups = sorted({n for n in nums if nums.count(n) > 1})
        assert not dups, "echoed twice: %s" % dups
        assert nums == sorted(nums), "echoes out of order"
        missing = [n for n in sent if n not in nums]
        unexplained = [n for n in missing if str(n) not in lost_ok]
        assert not unexplained, (
            "never echoed, and the killed backend never had them whole "
            "(kill after #%d): %s; it had %s whole, unechoed"
            % (kill_seq, unexplained, lost_ok))
        # what the victim had whole is never sent again, what it had in
        # part is sent again whole
        on_spare = [m["head"] for m in spare.messages(cid)]
        assert not set(lost_ok) & set(on_spare), \
            "sent to two backends: %s" % sorted(set(lost_ok) & set(on_spare))
        for head in partial:        # as far as the cut part names it
            assert any(h.startswith(head) for h in on_spare), \
                "%r..., cut at the kill, not replayed" % head
        # the stream went on over the spare: its own record says so
        after = [n for n in nums if n > kill_seq]
        assert len(after) > 50 and all(str(n) in on_spare for n in after), \
            "the spare echoed %d messages sent after the kill" % len(after)
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
    cid = new_id()
    env.expect_failover(cid)
    # the outage: connects to the dead port are refused
    env.expect_refused(b1, cid)

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "before")
        loop = asyncio.get_running_loop()
        b1.kill()
        killed_at = loop.time()
        # nothing was in flight at the kill ("before" came back); what is
        # sent once the proxy knows is buffered, all of it
        await await_until(lambda: interrupted(env, cid), 30,
                          what="the proxy to see the kill")
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
    cid = new_id()
    env.expect_error(r"client %s .*: no backend within 2000 ms: closing "
                     r"with 1014" % cid)
    env.expect_failover(cid)
    env.expect_refused(b1, cid)

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "before")
        b1.kill()
        await await_until(lambda: interrupted(env, cid), 30,
                          what="the proxy to see the kill")
        try:
            await ws.send("into the void")
        except websockets.ConnectionClosed:
            pass
        code, reason = await closed(ws, 60)
        assert (code, reason) == (1014, "no backend")
        assert env.httpd.log_lines(r"client %s .*closing with 1014" % cid), \
            "the 1014 is logged with the id"
    asyncio.run(run())


@pytest.mark.alarm(200)
def test_hundred_clients_survive_kill(env):
    """100 clients spread over 2 backends, one backend SIGKILLed: all 100
    keep working."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *FAST))
    cids = [new_id() for _ in range(100)]
    for cid in cids:
        env.expect_failover(cid)
    env.expect_refused(b1)      # a pipe that tries it again once backed off

    async def run():
        clients = await asyncio.gather(*(connect(env, cid) for cid in cids))
        names = [(await whoami(ws))["name"] for ws in clients]
        assert names.count("b1") > 0 and names.count("b2") > 0, \
            "least-pipes selection spreads clients over both backends"
        await asyncio.gather(*(echo(ws, "hello-%d" % i)
                               for i, ws in enumerate(clients)))
        b1.kill()
        # nothing was in flight at the kill; once the proxy has seen it
        # for each of b1's clients, every message comes back
        on_b1 = [cid for cid, n in zip(cids, names) if n == "b1"]
        await await_until(lambda: interrupted_ids(env) >= set(on_b1),
                          60, what="the proxy to see the kill")
        await asyncio.gather(*(echo(ws, "after-%d" % i, timeout=60)
                               for i, ws in enumerate(clients)))
        assert all(ws.open for ws in clients)
        after = [(await whoami(ws))["name"] for ws in clients]
        assert after == ["b2"] * 100
        await asyncio.gather(*(ws.close() for ws in clients))
    asyncio.run(run())
