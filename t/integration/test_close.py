"""Closing (DESIGN §3): a backend close code either ends the session (the
client gets the same code and reason) or, for WSPersistFailoverCodes, moves
the pipe; a client close is passed to the backend; a client that vanishes
gets its backend closed with 1001."""

import asyncio
import re

import pytest
import websockets

from wsp_env import (RawWS, await_until, closed, connect, echo, hget,
                     new_id, wait_until, whoami)

# a 1012 must not send the pipe straight back to the backend that sent it
SLOW_RETRY = ("WSPersistConnectTimeout 10", "WSPersistRetry 5s 10s")


async def until_closed(backend, cid):
    await await_until(lambda: backend.closes(cid), 20,
                      what="%s to record its close" % backend.name)


def two_backends(env, *lines):
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(env.location("/ws/", [b1, b2], *lines))
    return {"b1": b1, "b2": b2}


@pytest.mark.parametrize("code,reason", [(1000, "bye"), (1008, "policy"),
                                         (4001, "session over")])
def test_backend_close_ends_session(env, code, reason):
    backends = two_backends(env, *SLOW_RETRY)
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:%d:%s" % (code, reason))
        assert await closed(ws) == (code, reason)
        other = [b for n, b in backends.items() if n != me["name"]][0]
        assert other.opens(cid) == [], "no failover for this code"
    asyncio.run(run())


def test_backend_close_handshake_completes(env):
    """The backend that closes gets its close answered (not a dropped
    connection, which it would record as 1006)."""
    backends = two_backends(env, *SLOW_RETRY)
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:1000:bye")
        await closed(ws)
        be = backends[me["name"]]
        c = await await_until(lambda: be.closes(cid), 20,
                              what="backend close record")
        assert c[0]["by"] == "us" and c[0]["code"] == 1000
    asyncio.run(run())


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013, 1014])
def test_backend_failover_code_moves_pipe(env, code):
    """Default WSPersistFailoverCodes: the client stays open and the next
    echo comes from the other backend, with X-WS-Persist-Resume: 1."""
    backends = two_backends(env, *SLOW_RETRY)
    cid = new_id()
    env.expect_failover(cid, why=r'close %d "restarting"' % code,
                        messages="0")

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:%d:restarting" % code)
        # a message written to the closing backend may be lost (DESIGN §3)
        await until_closed(backends[me["name"]], cid)
        me2 = await whoami(ws)
        assert me2["name"] != me["name"]
        assert hget(me2["headers"], "X-WS-Persist-Resume") == "1"
        assert ws.open
        await echo(ws, "still here")
        assert len(backends[me["name"]].opens(cid)) == 1
        await ws.close()
    asyncio.run(run())


def test_failover_codes_directive(env):
    """WSPersistFailoverCodes 4000: 4000 now moves the pipe, and 1012 (no
    longer listed) ends the session with the backend's code and reason."""
    backends = two_backends(env, "WSPersistFailoverCodes 4000", *SLOW_RETRY)
    cid = new_id()
    env.expect_failover(cid, why=r'close 4000 "moving"', messages="0")

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:4000:moving")
        await until_closed(backends[me["name"]], cid)
        me2 = await whoami(ws)
        assert me2["name"] != me["name"]
        await ws.send("close:1012:restart")
        assert await closed(ws) == (1012, "restart")
    asyncio.run(run())


def test_backend_1010_is_not_relayed(env):
    """1010 is a client's code (RFC 6455 7.4.1: the server did not offer an
    extension the client needs): a backend that closes with it broke the
    protocol. The client never sees 1010; the proxy answers the backend
    with 1002 and the pipe fails over to the other backend."""
    backends = two_backends(env, *SLOW_RETRY)
    cid = new_id()
    why = r"its close frame broke the protocol: 1002 \(protocol error\)"
    env.expect_failover(cid, why=why, messages="0")

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:1010:need ext")
        await until_closed(backends[me["name"]], cid)
        me2 = await whoami(ws)
        assert me2["name"] != me["name"]
        assert ws.open, "the client was closed (%r)" % ws.close_code
        await echo(ws, "still here")
        await ws.close()
        return backends[me["name"]]
    bad = asyncio.run(run())
    assert env.httpd.log_lines(r"client %s .*%s" % (cid, why))
    c = bad.closes(cid)
    assert (c[0]["by"], c[0]["code"]) == ("us", 1002), \
        "the backend's 1010 was not answered with 1002: %r" % c


def _log_text(raw):
    """What the error log shows of a peer's bytes: the module writes
    printable ASCII as it is, anything else and quotes and backslashes as
    \\xHH; httpd's error log then doubles each backslash."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\'
                   else "\\\\x%02x" % b for b in raw)


# valid UTF-8 (no 1007) that would forge a line, colour the terminal and
# end the quoted reason early if written as it is
FORGED = 'x"\\\nAH00000: [core:error] forged\x1b[31m\u00e9'


@pytest.mark.parametrize("code", [1000, 1012])
def test_backend_close_reason_escaped_in_log(env, code):
    """A backend's close reason reaches the error log only escaped,
    whether the close ends the session (its debug line) or moves the
    pipe (its failover warning)."""
    backends = two_backends(env, *SLOW_RETRY)
    cid = new_id()
    shown = re.escape(_log_text(FORGED.encode()))
    if code == 1012:
        env.expect_failover(cid, why=r'close 1012 "%s"' % shown,
                            messages="0")

    async def run():
        ws = await connect(env, cid)
        me = await whoami(ws)
        await ws.send("close:%d:%s" % (code, FORGED))
        if code == 1000:
            assert await closed(ws) == (1000, FORGED)
        else:
            await until_closed(backends[me["name"]], cid)
            me2 = await whoami(ws)
            assert me2["name"] != me["name"]
            await ws.close()
    asyncio.run(run())
    lines = env.httpd.log_lines(r"client %s " % cid)
    assert [l for l in lines if ('%d \"%s\"' % (code, _log_text(
        FORGED.encode()))) in l], "no line names the escaped reason:\n" \
        + "\n".join(lines)
    for line in env.httpd.log_lines():
        assert all(32 <= ord(ch) < 127 for ch in line), repr(line)
        assert not line.startswith("AH00000"), "a forged line: %r" % line


def test_client_close_passed_to_backend(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "hello")
        await asyncio.wait_for(ws.close(1000, "done"), 20)
        assert ws.close_code == 1000, "the client got its close reply"
    asyncio.run(run())
    c = wait_until(lambda: b1.closes(cid), 20, what="backend close record")
    assert (c[0]["code"], c[0]["reason"], c[0]["by"]) == (1000, "done",
                                                          "peer")


def test_client_close_4xxx_passed_to_backend(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "hello")
        await asyncio.wait_for(ws.close(4321, "app says bye"), 20)
        assert ws.close_code == 4321
    asyncio.run(run())
    c = wait_until(lambda: b1.closes(cid), 20, what="backend close record")
    assert (c[0]["code"], c[0]["reason"]) == (4321, "app says bye")


@pytest.mark.parametrize("how", ["close", "abort"])
def test_vanished_client_backend_gets_1001(env, how):
    """The client's TCP connection ends without a close frame (a clean FIN,
    or an RST): its backend is closed with 1001."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    assert ws.handshake().status == 101
    ws.send(RawWS.OP_TEXT, "hello")
    assert ws.recv_frame()[2:] == (RawWS.OP_TEXT, b"hello")
    if how == "abort":    # SO_LINGER 0: the close sends an RST
        import socket
        import struct
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                           struct.pack("ii", 1, 0))
    ws.close()
    c = wait_until(lambda: b1.closes(cid), 30, what="backend close record")
    assert c[0]["code"] == 1001, c


def test_vanished_client_id_free_again(env):
    """After a client vanished the id is free: reconnecting gets a fresh
    pipe (no 409 from a leftover)."""
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    assert ws.handshake().status == 101
    ws.close()
    wait_until(lambda: b1.closes(cid), 30, what="backend close record")

    async def run():
        try:
            again = await connect(env, cid)
        except websockets.InvalidStatusCode as e:
            raise AssertionError("reconnect refused with %d" % e.status_code)
        await echo(again, "back")
        await again.close()
    asyncio.run(run())
