"""Acknowledged delivery to backends (DESIGN §7, WSPersistAck): client
messages are numbered, kept until a backend acknowledges them with a
"wsp-ack:K" pong, and sent again after a failover from where the next
backend says it stands (X-WS-Persist-Received). The backends here are
t/backend.py --state: they share a state directory, as backends of one
application share a database."""

import asyncio
import fcntl
import os
import re
import signal
import subprocess
import termios
from pathlib import Path

import pytest

from wsp_env import (HOST, PYTHON, Backend, await_until, closed, connect,
                     echo, hget, new_id, port_open, recv, socket_copies,
                     wait_until)

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def stateful(env, name, *args):
    state = env.root / "state"
    state.mkdir(exist_ok=True)
    return env.backend(name, args=["--state", str(state)] + list(args))


def processed(be, cid):
    return [e for e in be.events("processed") if e["id"] == cid]


def heads(events):
    return [e["head"] for e in events]


def unread(pid):
    """Bytes waiting unread in the process's TCP sockets (it is stopped)."""
    total = 0
    for s in socket_copies(pid).values():
        buf = bytearray(4)
        fcntl.ioctl(s.fileno(), termios.FIONREAD, buf)
        total += int.from_bytes(buf, "little")
        s.close()
    return total


async def kill_with_unread(ws, victim):
    """SIGSTOP the backend, send m11..m15, which the proxy writes into its
    socket (it reads none of them), then SIGKILL it."""
    os.kill(victim.proc.pid, signal.SIGSTOP)
    for i in range(11, 16):
        await ws.send("m%d" % i)
    # 5 masked frames of 3 bytes each: 9 bytes each on the wire
    wait_until(lambda: unread(victim.proc.pid) >= 45, 10,
               what="m11..m15 written to the stopped backend")
    victim.kill()


@pytest.mark.parametrize("ack", ["On", "Off"])
def test_written_but_unprocessed_sent_again(env, ack):
    """Messages the proxy wrote into a backend that stopped and was then
    SIGKILLed, before it read them: with WSPersistAck On they were never
    acknowledged, and the next backend, which answers that it has
    processed the ones before, gets them: every message processed exactly
    once, in order. With Off they were completely written to a backend
    that failed and are lost (DESIGN 3): the next echo is a later
    message's."""
    a, b = stateful(env, "a"), stateful(env, "b")
    env.start_httpd(env.location("/ws/", [a, b], *FAST,
                                 "WSPersistAck %s" % ack))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        async with connect(env, cid) as ws:
            for i in range(1, 11):
                await echo(ws, "m%d" % i)
            victim = a if processed(a, cid) else b
            spare = b if victim is a else a
            env.expect_refused(victim, cid)
            await kill_with_unread(ws, victim)
            await ws.send("m16")
            got = await recv(ws)
            return victim, spare, got
    victim, spare, got = asyncio.run(run())
    opened = spare.opens(cid)
    assert len(opened) == 1, opened
    done = heads(processed(victim, cid)) + heads(processed(spare, cid))
    if ack == "On":
        assert got == "m11", "the first echo after the kill is %r" % got
        assert hget(opened[0]["headers"], "X-WS-Persist-Next") in (
            "10", "11"), opened[0]["headers"]
        assert done == ["m%d" % i for i in range(1, 17)], done
        assert [e["seq"] for e in processed(spare, cid)] == list(
            range(11, 17))
    else:
        assert got == "m16", "the first echo after the kill is %r" % got
        assert hget(opened[0]["headers"], "X-WS-Persist-Next") == "16", \
            opened[0]["headers"]
        assert done == ["m%d" % i for i in list(range(1, 11)) + [16]], done


def test_without_received_at_least_once_in_order(env):
    """A backend that neither acknowledges nor answers
    X-WS-Persist-Received gets every unacknowledged message again after a
    failover, from X-WS-Persist-Next on, in order: it drops the ones it
    processed before by their number."""
    a = stateful(env, "a", "--no-received", "--ack-every", "0")
    b = stateful(env, "b", "--no-received", "--ack-every", "0")
    env.start_httpd(env.location("/ws/", [a, b], *FAST, "WSPersistAck On"))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        async with connect(env, cid) as ws:
            for i in range(1, 6):
                await echo(ws, "m%d" % i)
            victim = a if processed(a, cid) else b
            env.expect_refused(victim, cid)
            victim.kill()
            await echo(ws, "m6")
            return victim, (b if victim is a else a)
    victim, spare = asyncio.run(run())
    opened = spare.opens(cid)
    assert len(opened) == 1
    assert hget(opened[0]["headers"], "X-WS-Persist-Next") == "1"
    assert [e["seq"] for e in spare.events("repeat")
            if e["id"] == cid] == [1, 2, 3, 4, 5]
    assert [(e["seq"], e["head"]) for e in processed(spare, cid)] == [
        (6, "m6")]


def test_kept_messages_hold_the_client_until_acknowledged(env):
    """Messages written but not acknowledged count against
    WSPersistBufferLimit: with a backend that does not acknowledge, the
    proxy stops reading the client once the kept bytes fill the limit
    (backpressure); each acknowledgement lets more through, and all
    arrive in order."""
    a = stateful(env, "a", "--ack-every", "0")
    env.start_httpd(env.location("/ws/", [a], *FAST, "WSPersistAck On",
                                 "WSPersistBufferLimit 64K"))
    cid = new_id()
    n, size = 30, 8000
    msgs = [b"%04d" % i + b"x" * (size - 4) for i in range(n)]

    async def run():
        async with connect(env, cid) as ws:
            got = []

            async def reader():
                while len(got) < n:
                    got.append(await ws.recv())

            task = asyncio.ensure_future(reader())
            for m in msgs:
                await ws.send(m)
            # a frame of 8 KB costs 8448 bytes held: 7 fit in 64K, one
            # more may be on its way in the client's hop
            await await_until(lambda: len(processed(a, cid)) >= 7, 10,
                              what="the first messages processed")
            await asyncio.sleep(0.5)
            held_back = len(processed(a, cid))
            assert held_back <= 9, \
                "%d processed without an acknowledgement" % held_back
            while len(processed(a, cid)) < n:
                before = len(processed(a, cid))
                os.kill(a.proc.pid, signal.SIGUSR1)
                await await_until(lambda: len(processed(a, cid)) > before
                                  or len(processed(a, cid)) == n, 10,
                                  what="more processed after an ack")
            await asyncio.wait_for(task, 20)
            return got, held_back
    got, held_back = asyncio.run(run())
    assert got == msgs
    assert [e["seq"] for e in processed(a, cid)] == list(range(1, n + 1))
    print("processed before the first acknowledgement: %d" % held_back)


def test_received_beyond_what_was_sent_fails_the_handshake(env):
    """A backend that says it has processed more messages than the client
    ever sent is wrong: its handshake fails, with the reason logged."""
    a = stateful(env, "a")
    cid = new_id()
    (env.root / "state" / cid).write_text("99")
    env.start_httpd(env.location("/ws/", [a], "WSPersistConnectTimeout 2",
                                 "WSPersistRetry 50ms 500ms",
                                 "WSPersistAck On"))
    env.expect_warn(r"client %s .* backend %s: handshake failed: "
                    r"X-WS-Persist-Received 99 beyond the 0 message\(s\) "
                    r"the client sent$" % (cid, re.escape(a.url)))
    env.expect_error(r"client %s \(127\.0\.0\.1\) backend -: no backend "
                     r"completed a handshake within 2000 ms: answering 503$"
                     % cid)

    async def run():
        try:
            async with connect(env, cid):
                pass
        except Exception as e:      # InvalidStatusCode
            return getattr(e, "status_code", e)
        return None
    assert asyncio.run(run()) == 503


def test_acknowledged_then_forgotten_ends_with_1011(env):
    """A backend that answers X-WS-Persist-Received below messages an
    earlier backend acknowledged (their state was lost) asks for
    messages the proxy freed: the session cannot keep its promise and
    ends with 1011, logged."""
    a, b = stateful(env, "a"), stateful(env, "b")
    env.start_httpd(env.location("/ws/", [a, b], *FAST, "WSPersistAck On"))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        async with connect(env, cid) as ws:
            for i in range(1, 5):
                await echo(ws, "m%d" % i)   # m4's echo follows m3's ack
            victim = a if processed(a, cid) else b
            env.expect_refused(victim, cid)
            env.expect_error(
                r"client %s .* backend \S+: backend has processed client "
                r"messages 1\.\.1 only, but 1\.\.[34] were acknowledged and "
                r"are not kept: closing with 1011$" % cid)
            (env.root / "state" / cid).write_text("1")
            victim.kill()
            await ws.send("m5")
            return await closed(ws)
    code, reason = asyncio.run(run())
    assert (code, reason) == (1011, "session state lost")


def test_drain_with_ack_moves_exactly_once(env):
    """Draining a stateful backend under a streaming client with
    WSPersistAck On: no new message goes to the draining backend, which
    acknowledges what it has, and only then does the replacement connect:
    its X-WS-Persist-Received is where the session stands, and every
    message is processed exactly once, in order, across both."""
    from wsp_manage import MANAGER, applied, backend_of, state

    a, b = stateful(env, "a"), stateful(env, "b")
    env.start_httpd(MANAGER + env.location("/ws/", [a, b], *FAST,
                                           "WSPersistAck On"))
    applied(env, "disable", b.url)
    cid = new_id()

    async def run():
        async with connect(env, cid) as ws:
            sent, got, flags = [], [], {}

            async def sender():
                n = 0
                while "stop" not in flags:
                    n += 1
                    await ws.send("m%d" % n)
                    sent.append("m%d" % n)
                    await asyncio.sleep(0.005)
                await ws.send("end")
                sent.append("end")

            async def receiver():
                while not got or got[-1] != "end":
                    got.append(await recv(ws, 20))

            async def director():
                await await_until(lambda: len(got) >= 50, 20,
                                  what="50 echoes")
                applied(env, "enable", b.url)
                applied(env, "drain", a.url)
                await await_until(
                    lambda: backend_of(state(env), a.url)["pipes"] == 0,
                    20, what="the pipe to leave a")
                await await_until(lambda: len(processed(b, cid)) >= 50, 20,
                                  what="50 messages on b")
                flags["stop"] = True
            await asyncio.wait_for(asyncio.gather(
                sender(), receiver(), director()), 60)
            return sent, got
    sent, got = asyncio.run(run())
    assert got == sent
    seqs = [e["seq"] for e in processed(a, cid) + processed(b, cid)]
    assert seqs == list(range(1, len(sent) + 1)), seqs
    assert heads(processed(a, cid) + processed(b, cid)) == sent
    assert not [e for e in a.events("repeat") + b.events("repeat")
                if e["id"] == cid]
    nxt = int(hget(b.opens(cid)[0]["headers"], "X-WS-Persist-Next"))
    assert processed(b, cid)[0]["seq"] == nxt, \
        "the replacement's first message is the one its request named"


class ReadmeBackend(Backend):
    """The README's acknowledging backend, as a reader would copy it;
    those started in one directory share their sessions' state."""

    @property
    def url(self):
        return "ws://%s:%d/" % (HOST, self.port)

    def _spawn(self):
        readme = (Path(__file__).resolve().parents[2] / "README.md") \
            .read_text()
        code = readme.split("<!-- ack-backend-example -->\n```python\n",
                            1)[1].split("```", 1)[0]
        src = self.env.root / "readme_backend.py"
        src.write_text(code)
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, str(src), str(self.port)], cwd=str(self.env.root),
                stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def _ready(self):
        assert self.proc.poll() is None, self.output()
        return port_open(self.port)


def test_readme_backend_example(env):
    """The README's backend example does what the README says: stopped
    and then SIGKILLed with messages written into its socket, it misses
    nothing, because the other one (sharing its state directory) gets
    them again and says where the session stands."""
    bes = [ReadmeBackend(env, n, env.port()) for n in ("first", "second")]
    for be in bes:
        env.backends.append(be)
        be.start()
    env.start_httpd(env.location("/ws/", bes, *FAST, "WSPersistAck On"))
    cid = new_id()
    env.expect_failover(cid)

    async def run():
        async with connect(env, cid) as ws:
            for i in range(1, 11):
                await echo(ws, "m%d" % i)
            victim = next(be for be in bes if socket_copies(be.proc.pid))
            env.expect_refused(victim, cid)
            await kill_with_unread(ws, victim)
            return [await recv(ws) for _ in range(5)]
    assert asyncio.run(run()) == ["m%d" % i for i in range(11, 16)]
    assert (env.root / "state" / cid).read_text() == "15"


def test_drain_called_off_while_waiting_for_acknowledgements(env):
    """A drain waits for the draining backend's acknowledgements and
    writes it no new message meanwhile; an administrator who enables the
    backend again before the move begins calls it off: the held messages
    go to the same backend, and the pipe stays there."""
    from wsp_manage import MANAGER, applied

    a = stateful(env, "a", "--ack-every", "0")
    b = stateful(env, "b")
    env.start_httpd(MANAGER + env.location("/ws/", [a, b], *FAST,
                                           "WSPersistAck On"))
    applied(env, "disable", b.url)
    cid = new_id()

    async def run():
        async with connect(env, cid) as ws:
            await echo(ws, "m1")            # on a, never acknowledged
            applied(env, "enable", b.url)
            applied(env, "drain", a.url)
            await await_until(lambda: env.httpd.log_lines(
                r"client %s .* waiting for its acknowledgement of 1 "
                r"message" % cid), 10, what="the move waiting for acks")
            applied(env, "enable", a.url)
            await echo(ws, "m2")
    asyncio.run(run())
    assert heads(processed(a, cid)) == ["m1", "m2"]
    assert not b.opens(cid), "the pipe moved although the drain was off"
