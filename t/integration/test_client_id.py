"""WSPersistClientId (DESIGN §1): where the client id comes from."""

import asyncio
import re

import websockets

from wsp_env import connect_path, hget, new_id, whoami

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def start(env, mode):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistClientId " + mode))
    return b1


async def backend_id(ws):
    return hget((await whoami(ws))["headers"], "X-WS-Persist-Client-Id")


async def refused(env, path, **kw):
    try:
        ws = await connect_path(env, path, **kw)
    except websockets.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


def test_query_mode(env):
    start(env, "query id")
    cid = new_id()

    async def run():
        async with connect_path(env, "/ws/room?id=" + cid) as ws:
            assert await backend_id(ws) == cid
        assert await refused(env, "/ws/room") == 400
        assert await refused(env, "/ws/room?id=nope") == 400
    asyncio.run(run())


def test_header_mode(env):
    start(env, "header X-Client")
    cid = new_id()

    async def run():
        async with connect_path(env, "/ws/room",
                                extra_headers={"X-Client": cid}) as ws:
            assert await backend_id(ws) == cid
        assert await refused(env, "/ws/room") == 400
    asyncio.run(run())


def test_cookie_mode(env):
    start(env, "cookie sid")
    cid = new_id()

    async def run():
        async with connect_path(
                env, "/ws/room",
                extra_headers={"Cookie": "theme=dark; sid=%s" % cid}) as ws:
            assert await backend_id(ws) == cid
        assert await refused(env, "/ws/room",
                             extra_headers={"Cookie": "theme=dark"}) == 400
    asyncio.run(run())


def test_generate_mode(env):
    start(env, "generate")

    async def run():
        ids = []
        for _ in range(2):
            async with connect_path(env, "/ws/room") as ws:
                given = ws.response_headers.get("X-WS-Persist-Client-Id")
                assert given and UUID_RE.fullmatch(given)
                assert await backend_id(ws) == given
                ids.append(given)
        assert ids[0] != ids[1], "a fresh id per connection"
    asyncio.run(run())
