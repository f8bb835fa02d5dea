"""Subprotocols (DESIGN §2): the backend's choice reaches the client, and a
replacement backend must accept the subprotocol the client already has."""

import asyncio
import re

from wsp_env import (await_until, connect, echo, hget, interruptions,
                     new_id, recv, whoami)

OFFER = ["chat", "superchat"]


def test_backend_choice_reaches_client(env):
    b1 = env.backend("b1", subprotocols=["superchat"])
    env.start_httpd(env.location("/ws/", [b1]))

    async def run():
        ws = await connect(env, subprotocols=OFFER)
        assert ws.subprotocol == "superchat"
        me = await whoami(ws)
        assert me["subprotocol"] == "superchat"
        offered = [p.strip() for p in hget(
            me["headers"], "Sec-WebSocket-Protocol").split(",")]
        assert offered == OFFER, "the client's offer is passed on"
        await ws.close()
    asyncio.run(run())


def test_no_subprotocol_offered_none_chosen(env):
    b1 = env.backend("b1", subprotocols=["superchat"])
    env.start_httpd(env.location("/ws/", [b1]))

    async def run():
        ws = await connect(env)
        assert ws.subprotocol is None
        me = await whoami(ws)
        assert hget(me["headers"], "Sec-WebSocket-Protocol") is None
        await ws.close()
    asyncio.run(run())


def test_replacement_must_accept_pinned_subprotocol(env):
    """b1 speaks superchat, b2 only chat, b3 superchat. The client is
    pinned to superchat on b1; b1 dies while only b2 is up: b2 is tried and
    treated as failed; once b3 is up the pipe goes there."""
    b1 = env.backend("b1", subprotocols=["superchat"])
    b2 = env.backend("b2", subprotocols=["chat"], start=False)
    b3 = env.backend("b3", subprotocols=["superchat"], start=False)
    env.start_httpd(env.location("/ws/", [b1, b2, b3],
                                 "WSPersistConnectTimeout 20",
                                 "WSPersistRetry 50ms 200ms"))
    cid = new_id()
    env.expect_failover(cid, backend=b1, messages="0")
    env.expect_refused(b1, cid)             # killed
    env.expect_refused(b3, cid)             # until it starts
    env.expect_warn(r"client %s .* backend %s: handshake failed: no "
                    r'subprotocol chosen, "superchat" required$'
                    % (cid, re.escape(b2.url)))

    async def run():
        ws = await connect(env, cid, subprotocols=OFFER)
        assert ws.subprotocol == "superchat"
        assert (await whoami(ws))["name"] == "b1"
        await b2.astart()
        b1.kill()
        await await_until(lambda: interruptions(env, cid) == 1, 30,
                          what="the proxy to see the kill")
        await ws.send("during-failover")
        await await_until(lambda: b2.opens(cid), 20,
                          what="the proxy to try b2")
        await b3.astart()
        assert await recv(ws, 30) == "during-failover"
        me = await whoami(ws)
        assert me["name"] == "b3"
        assert me["subprotocol"] == "superchat"
        assert ws.subprotocol == "superchat"
        assert b2.messages(cid) == [], "b2 was never used for messages"
        await await_until(lambda: len(b2.closes(cid)) == len(b2.opens(cid)),
                          20, what="every b2 connection to be closed")
        await echo(ws, "on b3")
        await ws.close()
    asyncio.run(run())
