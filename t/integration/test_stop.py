"""Stopping httpd (graceful-stop) under the event MPM, with either driver:
live pipes keep working until a second before GracefulShutdownTimeout,
then every one is closed with 1001 on both hops, whatever phase it is in,
and the child exits by itself before httpd would kill it."""

import asyncio
import signal

from wsp_env import (GRACEFUL_S, await_until, closed, connect, echo,
                     whoami)
from wsp_hostile import hostile


async def stop_and_wait(env, ws, meanwhile=None):
    """graceful-stop, then meanwhile(); the client's close. The child must
    exit by itself (httpd did not have to kill it)."""
    kids = env.httpd.children()
    env.httpd.proc.send_signal(signal.SIGWINCH)
    if meanwhile:
        await meanwhile()
    code, reason = await closed(ws, GRACEFUL_S + 5)
    await await_until(lambda: not any(env.httpd._running(k) for k in kids),
                      GRACEFUL_S, what="the child to exit")
    assert not env.httpd.log_lines(r"still did not exit"), \
        "httpd had to kill the child"
    return code, reason


def test_stop_closes_live_pipes_with_1001(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))

    async def run():
        ws = await connect(env)
        await whoami(ws)
        async def meanwhile():
            await asyncio.sleep(GRACEFUL_S / 2)
            await echo(ws, "still relayed while the server stops")
        code, reason = await stop_and_wait(env, ws, meanwhile)
        assert (code, reason) == (1001, "server stopping")
        await await_until(lambda: b1.closes(), 10, what="b1's close")
        assert b1.closes()[0]["code"] == 1001
    asyncio.run(run())


def test_stop_during_a_failover_handshake(env):
    """The pipe waits for a backend that accepted the connection but never
    answers the handshake: stopping still closes the client with 1001."""
    b1 = env.backend("b1")
    silent = hostile(env, "silent", "silent")
    env.start_httpd(env.location("/ws/", [b1, silent.url],
                                 "WSPersistConnectTimeout 60",
                                 "WSPersistRetry 30s 30s"))
    env.expect_failover(backend=b1, messages="0")

    async def run():
        ws = await connect(env)
        assert (await whoami(ws))["name"] == "b1"
        b1.kill()
        await await_until(lambda: silent.connections(), 10,
                          what="the failover's handshake to begin")
        code, reason = await stop_and_wait(env, ws)
        assert (code, reason) == (1001, "server stopping")
    asyncio.run(run())
