"""The client handshake, every row of DESIGN §2, on raw sockets. Each
refusal also proves that no backend was involved."""

import asyncio
import base64
import email.utils
import re

import pytest

from wsp_env import (RawWS, connect, echo, http_request, new_id,
                     upgrade_headers)


@pytest.fixture
def proxy(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1], "WSPersistConnectTimeout 5"))
    return b1


def request(env, path, method="GET", body=b"", **headers):
    return http_request(env.httpd.port, method, path, headers, body)


def up(**extra):
    return upgrade_headers(**extra)


def refused(env, backend, status, method="GET", cid=None, path=None,
            **headers):
    cid = cid or new_id()
    r = request(env, path or "/ws/" + cid, method, **headers)
    assert r.status == status, r
    assert backend.opens(cid) == [], "no backend is involved in a refusal"
    return r


def test_valid_upgrade_gets_101(env, proxy):
    """The control for every refusal below: the same request builder with
    nothing wrong gets 101, the right accept, and a working pipe."""
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        r = ws.handshake()   # checks Sec-WebSocket-Accept
        assert r.status == 101, r
        assert r.header("upgrade").lower() == "websocket"
        assert "upgrade" in r.header("connection").lower()
        assert r.header("sec-websocket-extensions") is None
        ws.send(RawWS.OP_TEXT, "hello")
        assert ws.recv_frame()[2:] == (RawWS.OP_TEXT, b"hello")
        assert len(proxy.opens(cid)) == 1
    finally:
        ws.close()


def test_plain_get_426(env, proxy):
    r = refused(env, proxy, 426, Host="127.0.0.1")
    assert r.header("upgrade").lower() == "websocket"
    assert r.header("sec-websocket-version") == "13"


def test_post_upgrade_400(env, proxy):
    refused(env, proxy, 400, method="POST", body=b"x=1", **up())


def test_missing_key_400(env, proxy):
    refused(env, proxy, 400, **up(Sec_WebSocket_Key=None))


@pytest.mark.parametrize("key", [
    "abc",                                            # not base64 of 16
    base64.b64encode(b"0123456789abcde").decode(),    # 15 bytes
    base64.b64encode(b"0123456789abcdefg").decode(),  # 17 bytes
    "!!!!!!!!!!!!!!!!!!!!!!==",                       # 24 chars, not base64
])
def test_invalid_key_400(env, proxy, key):
    refused(env, proxy, 400, **up(Sec_WebSocket_Key=key))


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_bad_connection_header_400(env, proxy, connection):
    refused(env, proxy, 400, **up(Connection=connection))


def test_missing_connection_header_400(env, proxy):
    refused(env, proxy, 400, **up(Connection=None))


def test_bad_upgrade_header_400(env, proxy):
    refused(env, proxy, 400, **up(Upgrade="foo"))


def test_connection_token_list_accepted(env, proxy):
    """"Connection: keep-alive, Upgrade" is an upgrade (a token list), so
    the 400s above are about the token, not the exact string."""
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        r = ws.handshake(Connection="keep-alive, Upgrade",
                         Upgrade="WebSocket")
        assert r.status == 101, r
    finally:
        ws.close()


@pytest.mark.parametrize("version", ["8", "14"])
def test_other_version_426(env, proxy, version):
    r = refused(env, proxy, 426, **up(Sec_WebSocket_Version=version))
    assert r.header("sec-websocket-version") == "13"


def test_client_id_missing_400(env, proxy):
    r = request(env, "/ws/", **up())
    assert r.status == 400, r
    assert proxy.opens() == []


@pytest.mark.parametrize("bad_id", [
    "not-a-uuid",
    "098d8a97-3615-4eb8-b803-c57c01c7536",     # one digit short
    "098d8a97-3615-4eb8-b803-c57c01c7536cc",   # one digit long
    "098d8a97x3615-4eb8-b803-c57c01c7536c",    # wrong separator
    "g98d8a97-3615-4eb8-b803-c57c01c7536c",    # not hex
])
def test_client_id_not_uuid_400(env, proxy, bad_id):
    refused(env, proxy, 400, path="/ws/" + bad_id, **up())
    assert proxy.opens() == []


def test_uppercase_uuid_accepted(env, proxy):
    """Either case is a UUID (the control for the rows above)."""
    cid = new_id().upper()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
    finally:
        ws.close()


def test_live_client_id_409(env, proxy):
    cid = new_id()

    async def run():
        first = await connect(env, cid)
        await echo(first, "first")
        r = request(env, "/ws/" + cid, **up())
        assert r.status == 409, r
        assert len(proxy.opens(cid)) == 1
        await echo(first, "first-still-works")
        await first.close()
    asyncio.run(run())


def expect_503(env, cid, be):
    """The lines of a 503 for cid: the 503 itself, and the connects to
    be, where nothing listens, refused."""
    env.expect_error(r"client %s \(127\.0\.0\.1\) backend -: no backend "
                     r"completed a handshake within 2000 ms: answering 503$"
                     % cid)
    env.expect_warn(r"client %s .* backend %s: handshake failed: connect: "
                    r"Connection refused$" % (cid, re.escape(be.url)))


def test_no_backend_503_retry_after(env):
    """No backend completes a handshake within WSPersistConnectTimeout:
    503 with Retry-After (delta-seconds or an HTTP date)."""
    dead = env.backend("dead", start=False)     # nothing listens there
    env.start_httpd(env.location("/ws/", [dead], "WSPersistConnectTimeout 2",
                                 "WSPersistRetry 50ms 500ms"))
    cid = new_id()
    expect_503(env, cid, dead)
    r = request(env, "/ws/" + cid, **up())
    assert r.status == 503, r
    ra = r.header("retry-after")
    assert ra is not None, r
    assert re.fullmatch(r"\d+", ra) or email.utils.parsedate_to_datetime(ra)
    assert env.httpd.log_lines(r"client %s .* answering 503" % cid), \
        "the 503 is logged with the client id"


def test_no_backend_503_then_backend_up_101(env):
    """The 503 is about the backend: once it listens, the same client id
    gets through (the 503 left no live pipe behind)."""
    b1 = env.backend("b1", start=False)
    env.start_httpd(env.location("/ws/", [b1], "WSPersistConnectTimeout 2",
                                 "WSPersistRetry 50ms 500ms"))
    cid = new_id()
    expect_503(env, cid, b1)
    assert request(env, "/ws/" + cid, **up()).status == 503
    b1.start()

    async def run():
        async with connect(env, cid) as ws:
            await echo(ws, "now")
    asyncio.run(run())
