"""WSPersistBufferLimit (DESIGN §3): a pipe without a backend holds at most
the limit of client messages; past it the client is closed with 1013, and
only that pipe is affected."""

import asyncio
import re

import websockets

from wsp_env import await_until, closed, connect, echo, new_id, recv


def expect_outage(env, cid, be):
    """The warn lines of an outage of be under cid: the interruption, and
    the connects refused while be is down."""
    env.expect_warn(r"client %s .* backend interrupted \(connection "
                    r"closed\); failing over with 0 message" % cid)
    env.expect_warn(r"client %s .* backend %s: handshake failed: connect: "
                    r"Connection refused$" % (cid, re.escape(be.url)))


def noticed(env, cid):
    """The proxy has logged the interruption of cid's backend."""
    return env.httpd.log_lines(r"client %s .* backend interrupted " % cid)


def test_buffer_full_closes_1013_others_unaffected(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(
        env.location("/ws/", [b1], "WSPersistBufferLimit 64K",
                     "WSPersistMaxMessageSize 1M",
                     "WSPersistConnectTimeout 60",
                     "WSPersistRetry 50ms 500ms")
        + env.location("/other/", [b2]))

    async def run():
        cid = new_id()
        env.expect_error(r"client %s .* buffer limit of 65536 bytes reached "
                         r"with no backend: closing with 1013$" % cid)
        expect_outage(env, cid, b1)
        a = await connect(env, cid)
        other = await connect(env, location="/other/")
        await echo(a, "a-before")
        await echo(other, "other-before")
        b1.kill()
        # the outage, not a slow backend, is what the buffer fills in
        await await_until(lambda: noticed(env, cid), 30,
                          what="the proxy to see the kill")
        chunk = "x" * 8000
        sent = 0
        try:
            for i in range(12):             # 96 000 bytes > 64K
                await a.send("%02d" % i + chunk)
                sent += 1
                await echo(other, "other-during-%d" % i)
        except websockets.ConnectionClosed:
            pass
        code, _ = await closed(a, 30)
        assert code == 1013, "buffer over the limit closes with 1013"
        assert sent >= 8, "64K held %d messages of 8 KB" % sent
        await echo(other, "other-after")
        assert other.open
        assert env.httpd.log_lines(r"client %s .* closing with 1013" % cid), \
            "the 1013 is logged with the id"
        await other.close()
    asyncio.run(run())


def test_buffer_under_limit_survives(env):
    """The same outage with less than the limit buffered: nothing is lost
    (the counterpart of the 1013 test, so the limit is what closes)."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistBufferLimit 64K",
                                 "WSPersistConnectTimeout 30",
                                 "WSPersistRetry 50ms 500ms"))

    cid = new_id()
    expect_outage(env, cid, b1)

    async def run():
        a = await connect(env, cid)
        await echo(a, "before")
        b1.kill()
        # nothing was in flight at the kill; what is sent once the proxy
        # has seen it is buffered, all of it
        await await_until(lambda: noticed(env, cid), 30,
                          what="the proxy to see the kill")
        msgs = ["%02d" % i + "y" * 8000 for i in range(6)]   # 48 000 bytes
        for m in msgs:
            await a.send(m)
        await b1.astart()
        for m in msgs:
            assert await recv(a, 30) == m
        await a.close()
    asyncio.run(run())
