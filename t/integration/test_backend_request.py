"""The backend's handshake request as the backend sees it (DESIGN §2):
path mapping, X-WS-Persist-*, X-Forwarded-*, passed-through headers, a
fresh key, never Sec-WebSocket-Extensions."""

import asyncio

from wsp_env import (HOST, await_until, connect, hget, interruptions,
                     new_id, whoami)

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def start(env, *lines):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], *lines))
    return b1


def test_path_mapping_with_query(env):
    start(env)
    cid = new_id()

    async def run():
        async with connect(env, cid, query="a=1&b=two") as ws:
            me = await whoami(ws)
            assert me["path"] == "/echo/%s?a=1&b=two" % cid
    asyncio.run(run())


def test_path_mapping_backend_without_path(env):
    """A backend URL with no path maps /ws/<id> to /<id>."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", ["ws://%s:%d" % (HOST, b1.port)]))
    cid = new_id()

    async def run():
        async with connect(env, cid) as ws:
            assert (await whoami(ws))["path"] == "/" + cid
    asyncio.run(run())


def test_client_id_and_resume_headers(env):
    """X-WS-Persist-Client-Id is the id; X-WS-Persist-Resume counts the
    replacements: 0, then 1, then 2."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *FAST))
    backends = {"b1": b1, "b2": b2}
    cid = new_id()
    env.expect_failover(cid)        # two kills, one each

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        assert hget(me["headers"], "X-WS-Persist-Client-Id") == cid
        assert hget(me["headers"], "X-WS-Persist-Resume") == "0"
        first = backends[me["name"]]
        second = b2 if first is b1 else b1

        first.kill()
        await await_until(lambda: interruptions(env, cid) == 1, 30,
                          what="the proxy to see the first kill")
        me = await whoami(ws)
        assert me["name"] == second.name
        assert hget(me["headers"], "X-WS-Persist-Client-Id") == cid
        assert hget(me["headers"], "X-WS-Persist-Resume") == "1"

        await first.astart()
        second.kill()
        await await_until(lambda: interruptions(env, cid) == 2, 30,
                          what="the proxy to see the second kill")
        me = await whoami(ws)
        assert me["name"] == first.name
        assert hget(me["headers"], "X-WS-Persist-Resume") == "2"
        await ws.close()
    asyncio.run(run())


def test_forwarded_headers(env):
    start(env)

    async def run():
        async with connect(env) as ws:
            h = (await whoami(ws))["headers"]
            assert hget(h, "X-Forwarded-For") == "127.0.0.1"
            assert hget(h, "X-Forwarded-Host") == \
                "%s:%d" % (HOST, env.httpd.port)
            assert hget(h, "X-Forwarded-Proto") == "http"
    asyncio.run(run())


def test_client_headers_passed_through(env):
    start(env)

    async def run():
        async with connect(
                env, origin="http://app.example.test",
                user_agent_header="wsp-test-agent/1.0",
                extra_headers={"Cookie": "sid=abc123; theme=dark",
                               "Authorization": "Bearer t0k3n"}) as ws:
            h = (await whoami(ws))["headers"]
            assert hget(h, "Origin") == "http://app.example.test"
            assert hget(h, "User-Agent") == "wsp-test-agent/1.0"
            assert hget(h, "Cookie") == "sid=abc123; theme=dark"
            assert hget(h, "Authorization") == "Bearer t0k3n"
            assert hget(h, "Sec-WebSocket-Version") == "13"
    asyncio.run(run())


def test_fresh_key_per_backend_handshake(env):
    start(env)

    async def run():
        async with connect(env) as ws:
            h = (await whoami(ws))["headers"]
            backend_key = hget(h, "Sec-WebSocket-Key")
            assert backend_key and backend_key != \
                ws.request_headers["Sec-WebSocket-Key"]
    asyncio.run(run())


def test_no_extensions_even_when_offered(env):
    """The client offers permessage-deflate; the backend is not offered any
    extension and the client gets none."""
    b1 = start(env)

    async def run():
        async with connect(env, compression="deflate") as ws:
            assert "permessage-deflate" in \
                ws.request_headers["Sec-WebSocket-Extensions"]
            assert ws.extensions == []
            assert ws.response_headers.get("Sec-WebSocket-Extensions") \
                is None
            h = (await whoami(ws))["headers"]
            assert hget(h, "Sec-WebSocket-Extensions") is None
    asyncio.run(run())
    assert all(hget(o["headers"], "Sec-WebSocket-Extensions") is None
               for o in b1.opens())
