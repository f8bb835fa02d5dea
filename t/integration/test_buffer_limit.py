"""WSPersistBufferLimit (DESIGN §3): a pipe without a backend holds at most
the limit of client messages; past it the client is closed with 1013, and
only that pipe is affected."""

import asyncio

import websockets

from wsp_env import closed, connect, echo, new_id, recv


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
        env.expect_error(cid)
        a = await connect(env, cid)
        other = await connect(env, location="/other/")
        await echo(a, "a-before")
        await echo(other, "other-before")
        b1.kill()
        await asyncio.sleep(0.3)
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
        assert env.httpd.log_lines(cid), "the 1013 is logged with the id"
        await other.close()
    asyncio.run(run())


def test_buffer_under_limit_survives(env):
    """The same outage with less than the limit buffered: nothing is lost
    (the counterpart of the 1013 test, so the limit is what closes)."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistBufferLimit 64K",
                                 "WSPersistConnectTimeout 30",
                                 "WSPersistRetry 50ms 500ms"))

    async def run():
        a = await connect(env)
        await echo(a, "before")
        b1.kill()
        await asyncio.sleep(0.3)
        msgs = ["%02d" % i + "y" * 8000 for i in range(6)]   # 48 000 bytes
        for m in msgs:
            await a.send(m)
        await b1.astart()
        for m in msgs:
            assert await recv(a, 30) == m
        await a.close()
    asyncio.run(run())
