"""Scale under the event-loop driver: pipes hold no worker thread, so a
child with 16 worker threads holds 2,000 pipes (counts only, no timing)."""

import asyncio

import pytest

import wsp_sanitize
from wsp_env import DRIVER, connect, hget, recv

PIPES = 2000
THREADS = 16

pytestmark = [
    pytest.mark.skipif(
        DRIVER != "event", reason="each pipe holds a worker thread under "
                                  "the thread driver"),
    # under ASan 2,000 pipes take longer to close than a graceful stop
    # waits: a scale test, not a memory-safety one
    pytest.mark.skipif(wsp_sanitize.ENABLED, reason="scale, not checked "
                       "under the sanitizers (make test SANITIZE=1)"),
]


@pytest.mark.alarm(200)
def test_2000_pipes_on_16_worker_threads(env):
    """2,000 clients open pipes through one child with ThreadsPerChild 16;
    every one of them echoes once all are open, and the backend saw 2,000
    handshakes."""
    b1 = env.backend("b1")
    # 100 handshakes at a time on 16 threads: the MPM says it is at its
    # limit while each of them waits for its backend
    env.expect_error("AH00484")
    env.start_httpd(
        "ThreadsPerChild %d\nMaxRequestWorkers %d\n"
        # suspended connections count against the event MPM's limit of
        # ThreadsPerChild + AsyncRequestWorkerFactor x idle threads
        "AsyncRequestWorkerFactor 400\n" % (THREADS, THREADS)
        + env.location("/ws/", [b1], "WSPersistConnectTimeout 30"))

    async def run():
        sem = asyncio.Semaphore(100)

        async def open_one(i):
            async with sem:
                ws = await connect(env)
                await ws.send("hello %d" % i)
                assert await recv(ws, 60) == "hello %d" % i
                return ws

        clients = await asyncio.gather(*(open_one(i) for i in range(PIPES)))
        # all open at once, by the backend's own record: 2,000 pipes of
        # 2,000 client ids, none of them ended
        opens = b1.opens()
        ids = {hget(o["headers"], "X-WS-Persist-Client-Id") for o in opens}
        assert len(opens) == PIPES and len(ids) == PIPES, \
            "%d backend connections for %d client ids" % (len(opens),
                                                         len(ids))
        assert b1.closes() == [], "pipes ended while the others opened"
        assert all(ws.open for ws in clients)

        # all open at once: each still echoes, its own message
        async def again(i, ws):
            await ws.send("again %d" % i)
            got = await recv(ws, 60)
            assert got == "again %d" % i, "client %d got %r" % (i, got)

        await asyncio.gather(*(again(i, ws) for i, ws in enumerate(clients)))
        assert all(ws.open for ws in clients)
        await asyncio.gather(*(ws.close() for ws in clients))

    asyncio.run(run())
    assert len(b1.opens()) == PIPES
