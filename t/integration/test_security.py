"""Security (README "Security"): the client id is checked before it is
used in a header or a log line, hop-by-hop and unknown client headers do
not reach the backend, and WSPersistAllowedOrigin refuses other Origins
with 403."""

import asyncio
import json
import re

import pytest

from wsp_env import (HOST, RawWS, connect, echo, hget, new_id, rejected,
                     upgrade_headers, http_request, whoami)

# the start of every error log entry: "[date] [module:level] "
LOG_LINE_START = re.compile(r"^\[[^\]]+\] \[[^\]:]*:\w+\] ")

HOP_BY_HOP = {"Keep-Alive": "timeout=5", "TE": "trailers",
              "Trailer": "X-Checksum", "Proxy-Authorization": "Basic cDpw",
              "Proxy-Connection": "keep-alive", "X-Internal-Secret": "s3"}


def raw_whoami(env, **headers):
    ws = RawWS(env.httpd.port, "/ws/" + new_id())
    r = ws.handshake(**headers)
    assert r.status == 101, r
    ws.send(RawWS.OP_TEXT, b"whoami")
    fin, rsv, op, payload = ws.recv_frame()
    ws.close()
    return json.loads(payload)["headers"]


def test_hop_by_hop_headers_not_forwarded(env):
    """Only the headers DESIGN §2 lists reach the backend: hop-by-hop ones
    (Keep-Alive, TE, Trailer, Proxy-*) and anything else the client sent
    stay at the proxy; Connection and Upgrade are the proxy's own."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]))
    extra = {k.replace("-", "_"): v for k, v in HOP_BY_HOP.items()}
    h = raw_whoami(env, Connection="keep-alive, Upgrade", **extra)
    for name in HOP_BY_HOP:
        assert hget(h, name) is None, "%s reached the backend" % name
    assert hget(h, "Connection") == "Upgrade"
    assert hget(h, "Upgrade") == "websocket"


def test_connection_named_headers_not_forwarded(env):
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]))
    h = raw_whoami(env, Connection="Upgrade, Cookie, Authorization",
                   Cookie="sid=1", Authorization="Bearer x")
    assert hget(h, "Cookie") is None
    assert hget(h, "Authorization") is None


def test_folded_header_cannot_inject(env):
    """An obs-fold continuation line never becomes a header of its own
    toward the backend (httpd refuses it or joins it to the value)."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]))
    ws = RawWS(env.httpd.port, "/ws/" + new_id())
    key_headers = upgrade_headers()
    req = "GET %s HTTP/1.1\r\n" % ws.path
    req += "".join("%s: %s\r\n" % kv for kv in key_headers.items())
    req += "User-Agent: a\r\n X-Evil: injected\r\n\r\n"
    ws.sock.sendall(req.encode())
    from wsp_env import read_head
    r = read_head(ws.sock, 20)
    if r.status == 101:
        ws.buf = r.rest
        ws.send(RawWS.OP_TEXT, b"whoami")
        h = json.loads(ws.recv_frame()[3])["headers"]
        assert hget(h, "X-Evil") is None
    else:
        assert r.status == 400
    ws.close()


@pytest.mark.parametrize("bad_id", [
    "not-a-uuid", "098d8a97-3615-4eb8-b803-c57c01c7536", "%0d%0aX-Evil:%201",
    "098d8a97-3615-4eb8-b803-c57c01c7536c%0d%0a",
    "098d8a97-3615-4eb8-b803-c57c01c7536c%00"])
def test_bad_client_id_refused_not_echoed(env, bad_id):
    """A client id that is not a UUID is refused with 400 before it is used
    anywhere: no backend sees it, and the log line does not quote it."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]))
    r = http_request(env.httpd.port, "GET", "/ws/" + bad_id,
                     upgrade_headers())
    # httpd itself answers 404 to an encoded NUL before any handler runs
    assert r.status == (404 if bad_id.endswith("%00") else 400)
    assert not be.opens()
    # every line of the log, not only the module's: a CR/LF that reached
    # the log would start a line of its own, without the module's tag
    lines = env.httpd.log_lines()
    assert lines, "the refusal is logged"
    for line in lines:
        assert "X-Evil" not in line and "%0d" not in line.lower(), line
        assert LOG_LINE_START.match(line), "a line that is not a log " \
            "entry of its own: %r" % line
    assert all("\r" not in line for line in env.httpd.log_text().split("\n"))


def test_header_client_id_refused(env):
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be], "WSPersistClientId header "
                                 "X-Client"))
    r = http_request(env.httpd.port, "GET", "/ws/x", upgrade_headers(
        X_Client=new_id() + ", " + new_id()))
    assert r.status == 400
    assert not be.opens()


ORIGINS = ("WSPersistAllowedOrigin https://app.example "
           "http://localhost:3000")


def test_allowed_origin_refuses_others_with_403(env):
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be], ORIGINS))

    async def run():
        e = await rejected(env, origin="https://evil.example")
        assert e.status_code == 403
        e = await rejected(env, origin="https://app.example.evil.example")
        assert e.status_code == 403
        e = await rejected(env, origin="null")
        assert e.status_code == 403
    asyncio.run(run())
    assert not be.opens(), "a refused Origin never reaches a backend"
    lines = env.httpd.log_lines(r"403: Origin \"https://evil\.example\" "
                                r"is not allowed")
    assert lines, "the refusal is logged with the Origin"


def test_allowed_origin_lets_listed_and_absent_in(env):
    """A listed Origin (any case) and a client that sends none (not a
    browser) connect."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be], ORIGINS))

    async def run():
        for origin in ("https://app.example", "HTTPS://APP.EXAMPLE",
                       "http://localhost:3000"):
            async with connect(env, origin=origin) as ws:
                h = (await whoami(ws))["headers"]
                assert hget(h, "Origin") == origin
        async with connect(env) as ws:
            await echo(ws, "no Origin header")
    asyncio.run(run())
    h = raw_whoami(env)
    assert hget(h, "Origin") is None


def test_allowed_origin_inner_context_overrides(env):
    """An inner <Location> list replaces the outer one; "*" lifts it."""
    be = env.backend("b1")
    env.start_httpd(
        "WSPersistAllowedOrigin https://app.example\n"
        + env.location("/ws/", [be])
        + env.location("/open/", [be], "WSPersistAllowedOrigin *")
        + env.location("/admin/", [be], "WSPersistAllowedOrigin "
                       "https://admin.example"))

    async def run():
        e = await rejected(env, origin="https://other.example")
        assert e.status_code == 403
        async with connect(env, origin="https://other.example",
                           location="/open/") as ws:
            await echo(ws, "any origin here")
        e = await rejected(env, origin="https://app.example",
                           location="/admin/")
        assert e.status_code == 403
        async with connect(env, origin="https://admin.example",
                           location="/admin/") as ws:
            await echo(ws, "admin")
    asyncio.run(run())


@pytest.mark.parametrize("value", ["https://app.example/", "app.example",
                                   "ftp://app.example", "https://a.example:0"])
def test_allowed_origin_bad_value_fails_configtest(env, value):
    be = env.backend("b1", start=False)
    rc, out = env.conf(env.location("/ws/", [be], "WSPersistAllowedOrigin "
                                    + value)).configtest()
    assert rc != 0
    assert "WSPersistAllowedOrigin" in out and value in out, out
