"""Backends that break the handshake or the protocol (DESIGN §3, failover):
each is treated as a failed backend, the pipe moves to the next one, the
client never sees a byte of the broken backend's output, and nothing waits
longer than the configured timeouts (short ones here; the suite's hang
guard is the only clock)."""

import asyncio

import pytest

from wsp_env import closed, connect, echo, recv, rejected, whoami
from wsp_hostile import hostile

FAST = ("WSPersistConnectTimeout 3", "WSPersistRetry 100ms 200ms")


async def probe_until_echo(ws, prefix, timeout=30):
    """Send prefix-0, prefix-1, ... until one comes back; every message
    the client gets must be one of them, in order. Returns them."""
    got = []
    sent = 0

    async def sender():
        nonlocal sent
        while True:
            await ws.send("%s-%d" % (prefix, sent))
            sent += 1
            await asyncio.sleep(0.2)

    task = asyncio.ensure_future(sender())
    try:
        got.append(await recv(ws, timeout))
    finally:
        task.cancel()
    # what was sent before the cancel may still echo
    try:
        while True:
            got.append(await asyncio.wait_for(ws.recv(), 1.0))
    except asyncio.TimeoutError:
        pass
    nums = []
    for m in got:
        assert isinstance(m, str) and m.startswith(prefix + "-"), \
            "the client got something it never sent: %r" % (m[:80],)
        nums.append(int(m.split("-")[-1]))
    assert nums == sorted(set(nums)), "echoes out of order or twice: %r" % nums
    return nums


@pytest.mark.parametrize("mode", ["silent", "garbage", "status",
                                  "badaccept"])
def test_handshake_failure_fails_over(env, mode):
    bad = hostile(env, "bad", mode)
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [bad.url, good], *FAST))

    async def run():
        async with connect(env) as ws:
            assert (await whoami(ws))["name"] == "good"
            await echo(ws, "after a %s backend" % mode)
    asyncio.run(run())
    assert bad.connections(), "the pool tried the %s backend first" % mode
    assert env.httpd.log_lines(r"handshake failed: .*"), \
        "the failed handshake is logged"


@pytest.mark.parametrize("mode", ["silent", "garbage", "status",
                                  "badaccept"])
def test_only_broken_backends_503(env, mode):
    """No usable backend at all: 503 within the connect timeout."""
    bad = hostile(env, "bad", mode)
    env.start_httpd(env.location("/ws/", [bad.url], *FAST))
    env.expect_error("answering 503")
    e = asyncio.run(rejected(env))
    assert e.status_code == 503
    assert bad.connections()


def test_garbage_reason_is_printable_in_log(env):
    """A backend's garbage reaches the error log only as printable text."""
    bad = hostile(env, "bad", "garbage")
    env.start_httpd(env.location("/ws/", [bad.url], *FAST))
    env.expect_error("answering 503")
    asyncio.run(rejected(env))
    lines = env.httpd.log_lines("handshake failed")
    assert lines
    for line in lines:
        assert all(32 <= ord(c) < 127 for c in line), repr(line)
        assert "\x1b" not in line


def test_oversized_backend_message_ends_session(env):
    """A backend message over the limit is not an interruption: another
    backend would be asked the same and answer the same, and every one of
    them would be counted failed in turn. The session ends with 1009, the
    client sees nothing of the message and no other backend is tried."""
    bad = hostile(env, "bad", "oversized")
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [bad.url, good], *FAST,
                                 "WSPersistMaxMessageSize 1M"))

    async def run():
        async with connect(env) as ws:
            await ws.send("probe")
            code, reason = await closed(ws, 20)
            assert (code, reason) == (1009, "backend message too big")
    asyncio.run(run())
    assert bad.events("frame"), "the oversized backend got the probe"
    assert not good.opens(), "another backend was tried"
    assert not env.httpd.log_lines("backend interrupted")


@pytest.mark.parametrize("mode", ["masked", "midframe"])
def test_broken_frames_fail_over(env, mode):
    """A backend that sends a masked frame or dies in the middle of a
    frame: the proxy drops it and moves on; the client sees nothing of
    what it sent."""
    bad = hostile(env, "bad", mode)
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [bad.url, good], *FAST,
                                 "WSPersistMaxMessageSize 1M"))

    async def run():
        async with connect(env) as ws:
            nums = await probe_until_echo(ws, mode)
            # the first probe went to the broken backend and may be lost
            # with it (completely written to a backend that failed); the
            # rest came back whole and in order
            assert nums, "echoes after the failover"
            assert (await whoami(ws))["name"] == "good"
    asyncio.run(run())
    assert bad.events("frame"), "the broken backend got the first probe"
    assert env.httpd.log_lines("backend interrupted"), \
        "the broken backend is logged as an interruption"


def _stuck_backend_run(env, limit):
    bad = hostile(env, "bad", "noread")
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [bad.url, good], *FAST,
                                 "WSPersistBufferLimit %s" % limit,
                                 "WSPersistPingInterval 1"))
    n, size = 40, 256 * 1024

    async def run():
        async with connect(env) as ws:
            got = []

            async def reader():
                while True:
                    m = await ws.recv()
                    got.append(int(m[:8]))
                    if got[-1] == n - 1:
                        return

            task = asyncio.ensure_future(reader())
            for i in range(n):
                await ws.send(b"%08d" % i + b"n" * (size - 8))
            await asyncio.wait_for(task, 90)
            assert got == sorted(set(got)), "in order, never twice"
            assert (await whoami(ws))["name"] == "good"
    asyncio.run(run())
    assert env.httpd.log_lines(r"backend interrupted \(no pong\)")


def test_backend_that_stops_reading(env):
    """A backend whose socket fills (it never reads) misses its pongs and
    the pipe fails over; what was not completely written to the stuck
    backend arrives at the next one whole and in order. 10 MB sent: the
    kernel takes about 4 MB toward the stuck backend, the pipe holds the
    rest (under its 16M limit)."""
    _stuck_backend_run(env, "16M")


def test_stuck_backend_with_full_buffer(env):
    """The same with a 1M limit: the pipe stops reading the client while
    the stuck backend holds it (backpressure), so its buffer is full when
    the failover starts."""
    _stuck_backend_run(env, "1M")
