"""WSPersistExclusive On (DESIGN §1): a backend serves at most one pipe."""

import asyncio

from wsp_env import await_until, connect, echo, new_id, rejected, whoami


def test_exclusive_one_pipe_per_backend(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], "WSPersistExclusive On",
                                 "WSPersistConnectTimeout 2"))
    backends = {"b1": b1, "b2": b2}

    async def run():
        c1 = await connect(env)
        c2 = await connect(env)
        n1 = (await whoami(c1))["name"]
        n2 = (await whoami(c2))["name"]
        assert {n1, n2} == {"b1", "b2"}, "two clients, two backends"

        cid3 = new_id()
        env.expect_error(r"client %s \(127\.0\.0\.1\) backend -: no "
                         r"backend completed a handshake within 2000 ms: "
                         r"answering 503$" % cid3)
        e = await rejected(env, cid3)
        assert e.status_code == 503, "no idle backend within the timeout"
        assert backends[n1].opens(cid3) == []
        assert backends[n2].opens(cid3) == []

        await c1.close()
        await await_until(lambda: backends[n1].closes(), 20,
                          what="c1's backend connection to close")
        c4 = await connect(env)
        assert (await whoami(c4))["name"] == n1, \
            "the backend c1 left serves the next client"
        await echo(c2, "c2 unaffected")
        await c4.close()
        await c2.close()
    asyncio.run(run())


def test_not_exclusive_by_default(env):
    """The control: without WSPersistExclusive one backend takes 3 pipes."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistConnectTimeout 2"))

    async def run():
        cs = [await connect(env) for _ in range(3)]
        for ws in cs:
            assert (await whoami(ws))["name"] == "b1"
        for ws in cs:
            await ws.close()
    asyncio.run(run())
