"""WSPersistDuplicateClient (DESIGN §1): a second connection for a live
client id is refused (reject) or takes over the pipe (replace)."""

import asyncio

from wsp_env import closed, connect, echo, hget, new_id, rejected, whoami


def test_reject_second_connection_409(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1],
                                 "WSPersistDuplicateClient reject"))
    cid = new_id()

    async def run():
        first = await connect(env, cid)
        await echo(first, "one")
        e = await rejected(env, cid)
        assert e.status_code == 409
        await echo(first, "first keeps working")
        assert len(b1.opens(cid)) == 1
        await first.close()
    asyncio.run(run())


def test_reject_is_the_default(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()

    async def run():
        first = await connect(env, cid)
        await echo(first, "one")
        assert (await rejected(env, cid)).status_code == 409
        await echo(first, "two")
        await first.close()
    asyncio.run(run())


def test_id_free_again_after_close(env):
    """A closed client's id is no longer live: reconnecting works."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()

    async def run():
        first = await connect(env, cid)
        await echo(first, "one")
        await first.close()
        # the pipe ends once the backend's close handshake is done too
        for _ in range(100):
            if b1.closes(cid):
                break
            await asyncio.sleep(0.05)
        again = await connect(env, cid)
        await echo(again, "two")
        await again.close()
    asyncio.run(run())


def test_replace_takes_over_pipe_and_backend(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2],
                                 "WSPersistDuplicateClient replace"))
    cid = new_id()
    backends = {"b1": b1, "b2": b2}

    async def run():
        first = await connect(env, cid)
        me1 = await whoami(first)
        second = await connect(env, cid)
        code, _ = await closed(first, 20)
        assert code == 1008, "the replaced client is closed with 1008"
        me2 = await whoami(second)
        assert (me2["name"], me2["pid"], me2["conn"]) == \
            (me1["name"], me1["pid"], me1["conn"]), \
            "the second client continues on the same backend connection"
        assert hget(me2["headers"], "X-WS-Persist-Resume") == "0"
        await echo(second, "flows")
        be = backends[me1["name"]]
        assert len(be.opens(cid)) == 1
        assert be.closes(cid) == [], "the backend connection stays open"
        other = b2 if be is b1 else b1
        assert other.opens(cid) == []
        await second.close()
    asyncio.run(run())


def test_replace_needs_the_session_subprotocol(env):
    """A connection that takes a live pipe over must offer the
    subprotocol the session has: otherwise 400 and the live client keeps
    its pipe; one that offers it among others gets a 101 naming it."""
    b1 = env.backend("b1", subprotocols=["chat", "other"])
    env.start_httpd(env.location("/ws/", [b1],
                                 "WSPersistDuplicateClient replace"))
    cid = new_id()

    async def run():
        first = await connect(env, cid, subprotocols=["chat"])
        assert first.subprotocol == "chat"
        e = await rejected(env, cid, subprotocols=["other"])
        assert e.status_code == 400
        await echo(first, "first keeps its pipe")
        second = await connect(env, cid, subprotocols=["other", "chat"])
        assert second.subprotocol == "chat"
        code, _ = await closed(first, 20)
        assert code == 1008
        await echo(second, "second has it")
        await second.close()
    asyncio.run(run())


def test_replace_brings_its_own_headers(env):
    """After a takeover, later backend handshakes carry the new
    connection's Cookie and Authorization, not the replaced one's."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2],
                                 "WSPersistDuplicateClient replace"))
    cid = new_id()
    env.expect_failover(cid, messages="0")
    backends = {"b1": b1, "b2": b2}

    async def run():
        first = await connect(env, cid, extra_headers={
            "Cookie": "who=first", "Authorization": "Bearer first"})
        me = await whoami(first)
        second = await connect(env, cid, extra_headers={
            "Cookie": "who=second", "Authorization": "Bearer second"})
        await closed(first, 20)
        await echo(second, "taken over")
        backends[me["name"]].kill()
        me2 = await whoami(second, 30)
        assert me2["name"] != me["name"]
        assert hget(me2["headers"], "Cookie") == "who=second"
        assert hget(me2["headers"], "Authorization") == "Bearer second"
        await second.close()
    asyncio.run(run())
