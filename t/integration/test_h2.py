"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT) with mod_http2's
H2WebSockets on: mod_http2 hands such a stream to the handler as an
HTTP/1.1-style upgrade on a secondary connection (r->connection->master);
the pipe runs in the stream's h2 worker, polls the pipe mod_http2 signals
the stream's input on, and reads and writes through the connection's
filters. Everything DESIGN 2-3 promise holds as over HTTP/1.1: echo,
fragments, failover with nothing lost after a kill, drain, pings, close
handshakes and codes, replace mode across protocols, 1001 at a graceful
stop, and no pipe outlives its stream however it ends.

The RFC 8441 client is python3-h2 on a plain socket: cleartext HTTP/2
with prior knowledge (h2c), and h2 over TLS chosen by ALPN; WebSocket
frames are built and parsed here."""

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

import pytest

from wsp_manage import MANAGER, applied
from wsp_env import (GRACEFUL_S, HOST, MODDIR, build_frame, close_payload,
                     connect, echo, hget, new_id, wait_until, whoami)

H2 = """\
LoadModule http2_module {moddir}/mod_http2.so
Protocols h2 h2c http/1.1
H2WebSockets on
LoadModule status_module {moddir}/mod_status.so
ExtendedStatus On
<Location "/server-status">
    SetHandler server-status
</Location>
""".format(moddir=MODDIR)

ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
REFUSAL_RE = r"\[ws_persist:info\] .* 501: WebSockets over HTTP/2"
FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def start(env, backends, ssl_on=False, *lines):
    env.start_httpd(H2 + env.location("/ws/", backends,
                                      "WSPersistConnectTimeout 5", *lines),
                    ssl=ssl_on)


# --------------------------------------------------------------------------
# mod_status ?auto (format: mod_ws_persist/wsp_status.c)


def auto(env):
    """The ws_persist lines of /server-status?auto as {key: value},
    fetched over HTTP/1.1."""
    conn = http.client.HTTPConnection(HOST, env.httpd.port, timeout=30)
    try:
        conn.request("GET", "/server-status?auto")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
    finally:
        conn.close()
    out = {}
    for line in body.splitlines():
        if line.startswith("WSPersist"):
            k, _, v = line.partition(": ")
            out[k] = v
    return out


def fields(value):
    """'state=ok pipes=2 ...' as a dict, numbers as ints."""
    out = {}
    for word in value.split():
        k, _, v = word.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def counts(env, be):
    """(pipes live in the child, the pool's pipes, the backend's pipes,
    the backend's served count)."""
    lines = auto(env)
    url = be.url.replace(":", "%3A")
    b = fields(lines["WSPersistBackend[/ws/][%s]" % url])
    return (int(lines["WSPersistProcessPipes"]),
            fields(lines["WSPersistPool[/ws/]"])["pipes"],
            b["pipes"], b["served"])


# --------------------------------------------------------------------------
# An RFC 8441 client


class H2Client:
    """python3-h2 on a socket: h2c with prior knowledge, or h2 over TLS
    with ALPN. pump() reads what is there within a timeout, so that one
    thread can send and receive on several WebSocket streams."""

    def __init__(self, env, tls=False, timeout=20):
        self.timeout = timeout
        if tls:
            ctx = ssl.create_default_context(cafile=str(env.make_cert()))
            ctx.set_alpn_protocols(["h2"])
            raw = socket.create_connection((HOST, env.httpd.ssl_port),
                                           timeout=timeout)
            self.sock = ctx.wrap_socket(raw, server_hostname=HOST)
            assert self.sock.selected_alpn_protocol() == "h2", \
                "the server did not choose h2 by ALPN: %r" % (
                    self.sock.selected_alpn_protocol(),)
            self.scheme, port = "https", env.httpd.ssl_port
        else:
            self.sock = socket.create_connection((HOST, env.httpd.port),
                                                 timeout=timeout)
            self.scheme, port = "http", env.httpd.port
        self.authority = "%s:%d" % (HOST, port)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.server_settings = None
        self.ack = True        # False: grant no more flow-control window
        self.unacked = []
        self.streams = {}      # id: {"headers", "ended", "reset", "data"}
        self.goaway = None
        self.conn.initiate_connection()
        self._flush()
        while self.server_settings is None:
            self.pump()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout=None):
        """Read what arrives within timeout (None: the client's, and
        something must come) and account for the events."""
        must = timeout is None
        wait = self.timeout if must else timeout
        pending = isinstance(self.sock, ssl.SSLSocket) and \
            self.sock.pending()
        if not pending and not select.select([self.sock], [], [], wait)[0]:
            if must:
                raise AssertionError("nothing from the server within %ss; "
                                     "streams: %r" % (wait, {
                                         k: dict(v, data=len(v["data"]))
                                         for k, v in self.streams.items()}))
            return False
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError("the server closed the HTTP/2 connection; "
                                 "goaway: %r" % (self.goaway,))
        for ev in self.conn.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                if self.server_settings is None:
                    self.server_settings = {}
                self.server_settings.update(
                    (k, v.new_value) for k, v in ev.changed_settings.items())
            elif isinstance(ev, h2.events.ResponseReceived) and st:
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                if st:
                    st["data"] += ev.data
                if self.ack:
                    self.conn.acknowledge_received_data(
                        ev.flow_controlled_length, ev.stream_id)
                else:
                    self.unacked.append((ev.flow_controlled_length,
                                         ev.stream_id))
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
                # RFC 9113 6.8: streams up to last_stream_id go on after
                # a GOAWAY (httpd's graceful stop sends one); python3-h2
                # 4.1 would refuse their DATA
                if ev.error_code == 0 and ev.last_stream_id:
                    self.conn.state_machine.state = \
                        h2.connection.ConnectionState.CLIENT_OPEN
        self._flush()
        return True

    def connect_ws(self, path, headers=()):
        """Send an extended CONNECT for a WebSocket to path; the stream
        id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {"headers": None, "ended": False, "reset": None,
                             "data": bytearray()}
        self.conn.send_headers(sid, [
            (":method", "CONNECT"), (":protocol", "websocket"),
            (":scheme", self.scheme), (":path", path),
            (":authority", self.authority),
            ("sec-websocket-version", "13")] + list(headers))
        self._flush()
        return sid

    def _settled(self, sid):
        st = self.streams[sid]
        if st["ended"] or st["reset"] is not None:
            return True
        # a 2xx to a CONNECT opens the tunnel: nothing more will come
        h = st["headers"]
        return h is not None and h[":status"].startswith("2")

    def wait(self, sids):
        """Read until each stream has its answer; {id: status or None}."""
        while not all(self._settled(s) for s in sids):
            self.pump()
        return {s: (self.streams[s]["headers"] or {}).get(":status")
                for s in sids}

    def send(self, sid, data):
        """DATA on sid as the flow-control windows allow."""
        data = memoryview(bytes(data))
        while data:
            room = min(self.conn.local_flow_control_window(sid),
                       self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(sid, data[:room].tobytes())
            data = data[room:]
            self._flush()

    def grant(self):
        """Flow-control window again, for what came meanwhile too (a
        reset stream's share goes back to the connection)."""
        self.ack = True
        for n, sid in self.unacked:
            self.conn.acknowledge_received_data(n, sid)
        self.unacked = []
        self._flush()

    def reset(self, sid):
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def close(self):
        try:
            self.conn.close_connection()
            self._flush()
        except OSError:
            pass
        self.sock.close()


class H2WS:
    """A WebSocket on one extended CONNECT stream of an H2Client."""

    TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10

    def __init__(self, client, cid, location="/ws/", expect="200"):
        self.c = client
        self.sid = client.connect_ws(location + cid)
        self.status = client.wait([self.sid])[self.sid]
        self.headers = client.streams[self.sid]["headers"]
        assert self.status == expect, client.streams[self.sid]
        self.close_got = None

    @property
    def stream(self):
        return self.c.streams[self.sid]

    def send_frame(self, opcode, payload=b"", fin=True):
        self.c.send(self.sid, build_frame(opcode, payload, fin=fin))

    def send(self, msg):
        if isinstance(msg, str):
            self.send_frame(self.TEXT, msg.encode())
        else:
            self.send_frame(self.BINARY, msg)

    def _frame(self):
        """One server frame from the stream's data, or None."""
        buf = self.stream["data"]
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "a masked frame from the server"
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            return None
        payload = bytes(buf[off:off + n])
        del buf[:off + n]
        return b0 & 0x80, b0 & 0x0F, payload

    def _frame_ready(self):
        """Whether a whole frame waits in the stream's data."""
        buf = self.stream["data"]
        if len(buf) < 2:
            return False
        n, off = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return False
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return False
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        return len(buf) >= off + n

    def recv_frame(self, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            f = self._frame()
            if f:
                return f
            st = self.stream
            assert not st["ended"] and st["reset"] is None, \
                "the stream ended: %r" % dict(st, data=bytes(st["data"]))
            left = deadline - time.monotonic()
            assert left > 0, "no frame within %ss" % timeout
            self.c.pump(left)

    def recv(self, timeout=20):
        """The next data message (str or bytes); pings are answered; a
        close is returned as ("close", code, reason)."""
        parts, op = [], None
        while True:
            fin, opcode, payload = self.recv_frame(timeout)
            if opcode == self.PING:
                self.send_frame(self.PONG, payload)
                continue
            if opcode == self.PONG:
                continue
            if opcode == self.CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload \
                    else None
                self.close_got = (code, payload[2:].decode())
                return ("close",) + self.close_got
            if opcode:
                assert op is None, "a new message inside a fragmented one"
                op = opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode() if op == self.TEXT else data

    def echo(self, msg, timeout=20):
        self.send(msg)
        got = self.recv(timeout)
        assert got == msg, (got if len(got) < 200 else got[:200])

    def whoami(self):
        self.send("whoami")
        return json.loads(self.recv())

    def close(self, code=1000, reason=""):
        """The client's close handshake: the close the proxy answers."""
        self.send_frame(self.CLOSE, close_payload(code, reason))
        while True:
            got = self.recv()
            if isinstance(got, tuple):
                return got[1:]

    def wait_ended(self, timeout=20):
        """Until mod_http2 ends the stream (the handler returned)."""
        deadline = time.monotonic() + timeout
        while not self.stream["ended"] and self.stream["reset"] is None:
            left = deadline - time.monotonic()
            assert left > 0, "the stream did not end within %ss" % timeout
            self.c.pump(left)


# --------------------------------------------------------------------------


def pipes(env, be):
    """(pipes live in the child, the pool's pipes, the backend's pipes)."""
    return counts(env, be)[:3]


def wait_no_pipes(env, be, what):
    wait_until(lambda: pipes(env, be) == (0, 0, 0), 15, what=what)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
def test_h2_websocket_echo(env, tls):
    """An extended CONNECT is answered 200 (mod_http2's translation of
    the handler's 101) once a backend took the handshake; text and binary
    messages, small and large (past both flow-control windows), echo; the
    backend sees the forwarded headers as for HTTP/1.1; the pipe counts
    as one and is gone when the client closes."""
    b1 = env.backend("b1")
    start(env, [b1], tls)
    cid = new_id()
    c = H2Client(env, tls=tls)
    try:
        assert c.server_settings.get(ENABLE_CONNECT_PROTOCOL) == 1, \
            "no SETTINGS_ENABLE_CONNECT_PROTOCOL=1 from mod_http2: %r" \
            % c.server_settings
        ws = H2WS(c, cid)
        assert "sec-websocket-accept" not in ws.headers
        me = ws.whoami()
        assert me["name"] == "b1"
        assert hget(me["headers"], "X-WS-Persist-Client-Id") == cid
        assert hget(me["headers"], "X-Forwarded-Proto") == \
            ("https" if tls else "http")
        assert hget(me["headers"], "X-WS-Persist-Resume") == "0"
        ws.echo("hello over h2")
        ws.echo(b"\x00\x01\x02" * 10)
        ws.echo("x" * 200000)
        ws.echo(os.urandom(300000))
        for n in range(50):
            ws.echo("m%d" % n)
        assert pipes(env, b1) == (1, 1, 1)
        assert ws.close(1000, "bye") == (1000, "bye")
        ws.wait_ended()
    finally:
        c.close()
    wait_no_pipes(env, b1, "the pipe gone after the close")
    # the backend logs its close once its side is done too
    closes = wait_until(lambda: b1.closes(cid), 15, what="b1's close")
    assert [(e["code"], e["reason"]) for e in closes] == [(1000, "bye")]
    assert env.httpd.log_lines(REFUSAL_RE) == []


def test_h2_fragmented_messages(env):
    """A message the client sends in fragments reaches the backend whole
    (its echo comes back as one message); a message the backend sends in
    fragments reaches the client whole; a ping between fragments is
    answered and the message stays intact."""
    b1 = env.backend("b1")
    start(env, [b1])
    cid = new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, cid)
        ws.send_frame(H2WS.TEXT, b"one-", fin=False)
        ws.send_frame(0, b"two-", fin=False)
        ws.send_frame(H2WS.PING, b"mid")
        ws.send_frame(0, b"three", fin=True)
        fin, op, payload = ws.recv_frame()
        assert (op, payload) == (H2WS.PONG, b"mid")
        assert ws.recv() == "one-two-three"
        heads = [m["head"] for m in b1.messages(cid)]
        assert heads == ["one-two-three"]
        ws.send("frag:4:abcdefghijklmnop")
        assert ws.recv() == "abcdefghijklmnop"
        ws.send_frame(H2WS.BINARY, b"\x01" * 70000, fin=False)
        ws.send_frame(0, b"\x02" * 70000, fin=True)
        assert ws.recv() == b"\x01" * 70000 + b"\x02" * 70000
        assert ws.close() == (1000, "")
    finally:
        c.close()
    wait_no_pipes(env, b1, "the pipe gone")


def test_h2_backend_kill_mid_stream(env):
    """A numbered message every 10 ms on an h2 WebSocket; its backend is
    SIGKILLed with a spare up. The stream stays open; every message sent
    after the kill comes back once, in order; nothing comes back twice or
    out of order, and one missing from before the kill is one the killed
    backend had whole (DESIGN 3)."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    backends = {"b1": b1, "b2": b2}
    start(env, [b1, b2], False, *FAST)
    cid = new_id()
    env.expect_failover(cid)
    c = H2Client(env)
    try:
        ws = H2WS(c, cid)
        victim = backends[ws.whoami()["name"]]
        spare = b2 if victim is b1 else b1
        env.expect_refused(victim, cid)
        sent, got = [], []
        kill_seq = remains = None
        stop_at = None
        n = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = time.monotonic()
            if stop_at is None or now < stop_at:
                n += 1
                ws.send(str(n))
                sent.append(n)
            while ws._frame_ready() or c.pump(0.01):
                while ws._frame_ready():
                    got.append(int(ws.recv()))
            if kill_seq is None and len(got) >= 30:
                remains = victim.kill_keeping_sockets()
                kill_seq = sent[-1]
                stop_at = time.monotonic() + 2
            if stop_at and now >= stop_at and got and got[-1] == sent[-1]:
                break
        assert kill_seq is not None and got[-1] == sent[-1], \
            "sent %d, echoed up to %s" % (len(sent), got[-1:])
        assert not c.streams[ws.sid]["ended"]
        assert all(a < b for a, b in zip(got, got[1:])), \
            "an echo twice or out of order"
        after = [m for m in sent if m > kill_seq]
        assert len(after) > 50
        assert not set(after) - set(got), "sent after the kill, lost"
        whole, partial = victim.lost_with(cid, remains)
        lost = sorted(set(sent) - set(got))
        assert set(lost) <= set(int(h) for h in whole if h.isdigit()), \
            "lost %s, the killed backend had whole only %s" % (lost, whole)
        me = ws.whoami()
        assert me["name"] == spare.name
        assert hget(me["headers"], "X-WS-Persist-Resume") == "1"
        assert ws.close() == (1000, "")
        ws.wait_ended()
    finally:
        c.close()


def test_h2_backend_close_code_relayed(env):
    """A backend's close with a session-ending code (4001) reaches the
    h2 client with its reason; the client answers, the stream ends, no
    pipe is left and the id is free again."""
    b1 = env.backend("b1")
    start(env, [b1])
    cid = new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, cid)
        ws.echo("before")
        ws.send("close:4001:session over")
        assert ws.recv() == ("close", 4001, "session over")
        ws.send_frame(H2WS.CLOSE, close_payload(4001, "session over"))
        ws.wait_ended()
        wait_no_pipes(env, b1, "the pipe gone after the backend's close")
        ws2 = H2WS(c, cid)
        ws2.echo("again")
        assert ws2.close() == (1000, "")
    finally:
        c.close()


@pytest.mark.parametrize("how", ["rst_stream", "connection_drop"])
def test_h2_stream_end_leaves_no_pipe(env, how):
    """An h2 WebSocket that ends without a close frame, by RST_STREAM or
    by its TCP connection dropping, ends its pipe: the backend gets 1001,
    the counts return to 0, and the same client id connects again (no
    409), over h2 and over HTTP/1.1."""
    b1 = env.backend("b1")
    start(env, [b1])
    ids = [new_id() for _ in range(5)]
    c = H2Client(env)
    socks = [H2WS(c, cid) for cid in ids]
    for n, ws in enumerate(socks):
        ws.echo("live %d" % n)
    assert pipes(env, b1) == (5, 5, 5)
    if how == "rst_stream":
        for ws in socks:
            c.reset(ws.sid)
        c.pump(0.2)
    else:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        c.sock.close()
    wait_no_pipes(env, b1, "the pipes of the ended streams gone")
    wait_until(lambda: len([e for e in b1.events() if e["ev"] == "close"])
               == 5, 15, what="the backend's connections closed")
    assert {e["code"] for e in b1.events() if e["ev"] == "close"} == {1001}
    c2 = H2Client(env) if how == "connection_drop" else c
    try:
        ws = H2WS(c2, ids[0])
        ws.echo("same id over h2")
        assert ws.close() == (1000, "")
    finally:
        c2.close()

    async def run():
        for cid in ids[1:]:
            async with connect(env, cid) as ws:
                await echo(ws, "same id over http/1.1")
    asyncio.run(run())
    wait_no_pipes(env, b1, "every pipe gone")


def test_h2_pings(env):
    """WSPersistPingInterval 1: an h2 client that answers the proxy's
    pings keeps its pipe over several intervals; one that reads and never
    answers is given up on, its stream ends and its backend gets 1001."""
    b1 = env.backend("b1")
    start(env, [b1], False, "WSPersistPingInterval 1")
    answering, silent = new_id(), new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, answering)
        quiet = H2WS(c, silent)
        quiet.echo("hello")
        pings = 0
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            c.pump(0.1)
            while ws._frame_ready():
                fin, op, payload = ws.recv_frame()
                assert op == H2WS.PING, op
                ws.send_frame(H2WS.PONG, payload)
                pings += 1
        assert pings >= 2, "the proxy pinged the quiet h2 client %d" % pings
        ws.echo("still here")
        ops = []
        while True:
            while quiet._frame_ready():
                ops.append(quiet._frame()[1])
            if quiet.stream["ended"] or quiet.stream["reset"] is not None:
                break
            c.pump(10)
        assert H2WS.PING in ops and H2WS.CLOSE not in ops, ops
        ws.echo("the other stream lives on")
        assert ws.close() == (1000, "")
    finally:
        c.close()
    closes = wait_until(lambda: b1.closes(silent), 30,
                        what="the silent client's backend closed")
    assert [(e["code"], e["reason"]) for e in closes] == \
        [(1001, "client went away")]
    assert len(b1.opens(answering)) == 1


def test_h2_drain_moves_the_stream(env):
    """The manager drains an h2 WebSocket's backend while it streams: the
    pipe moves to the other backend at a message boundary, nothing is
    lost or repeated, and the old backend gets 1001."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(H2 + MANAGER + env.location("/ws/", [b1, b2], *FAST))
    applied(env, "disable", b2.url)
    cid = new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, cid)
        assert ws.whoami()["name"] == "b1"
        applied(env, "enable", b2.url)
        sent, got, n, drained = [], [], 0, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if drained is None or time.monotonic() < drained + 1:
                n += 1
                ws.send(str(n))
                sent.append(n)
            while ws._frame_ready() or c.pump(0.01):
                while ws._frame_ready():
                    got.append(int(ws.recv()))
            if drained is None and len(got) >= 30:
                applied(env, "drain", b1.url)
                drained = time.monotonic()
            if drained and time.monotonic() > drained + 1 and got \
                    and got[-1] == sent[-1]:
                break
        assert got == sent, "lost, repeated or out of order"
        assert ws.whoami()["name"] == "b2"
        closes = wait_until(lambda: b1.closes(cid), 15, what="b1's close")
        assert [e["code"] for e in closes] == [1001]
        assert ws.close() == (1000, "")
    finally:
        c.close()


def test_h2_client_that_does_not_read(env):
    """An h2 client that stops granting flow-control window while its
    backend sends: mod_http2's stream buffer fills, the pipe's write waits
    H2StreamTimeout, then the client is gone: the stream is reset or
    ended, the backend gets 1001, no pipe is left, and another h2
    WebSocket on the same connection was served all along."""
    b1 = env.backend("b1")
    env.start_httpd(H2 + "H2StreamTimeout 2\n" + env.location(
        "/ws/", [b1], "WSPersistConnectTimeout 5"))
    stuck, other = new_id(), new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, stuck)
        ws2 = H2WS(c, other)
        ws.echo("hello")
        c.ack = False
        for _ in range(20):
            ws.send("big:100000")
        c.pump(1)
        c.grant()
        ws2.echo("the other stream is served")
        c.ack = False
        closes = []
        deadline = time.monotonic() + 30
        while not closes and time.monotonic() < deadline:
            c.pump(0.2)
            closes = b1.closes(stuck)
        assert [(e["code"], e["reason"]) for e in closes] == \
            [(1001, "client went away")]
        wait_until(lambda: counts(env, b1)[0] == 1, 15,
                   what="only the other stream's pipe left")
        assert env.httpd.log_lines(r"client %s .*client went away \(write "
                                   r"failed\)" % stuck)
        c.grant()
        ws2.echo("still served")
        assert ws2.close() == (1000, "")
    finally:
        c.close()
    wait_no_pipes(env, b1, "no pipe left")


def test_h2_replace_mode_takeovers(env):
    """WSPersistDuplicateClient replace across protocols: an HTTP/1.1
    connection takes over an h2 WebSocket's pipe (the h2 client gets 1008
    and its stream ends), then an h2 stream takes it back; the backend
    connection is the same throughout and nothing is lost."""
    b1 = env.backend("b1")
    start(env, [b1], False, "WSPersistDuplicateClient replace")
    cid = new_id()
    c = H2Client(env)
    ws = H2WS(c, cid)
    conn = ws.whoami()["conn"]
    ws.echo("on h2")

    async def over_http11():
        async with connect(env, cid) as ws1:
            await echo(ws1, "on http/1.1")
            # the h2 client was let go
            got = await asyncio.to_thread(ws.recv)
            assert got == ("close", 1008, "replaced")
            ws2 = await asyncio.to_thread(H2WS, c, cid)
            code = await asyncio.wait_for(ws1.wait_closed(), 20)
            assert ws1.close_code == 1008, code
            return ws2
    try:
        ws2 = asyncio.run(over_http11())
        ws.wait_ended()
        me = ws2.whoami()
        assert me["conn"] == conn, "a new backend connection"
        ws2.echo("back on h2")
        assert [m["head"] for m in b1.messages(cid)] == [
            "whoami", "on h2", "on http/1.1", "whoami", "back on h2"]
        assert ws2.close() == (1000, "")
    finally:
        c.close()
    wait_no_pipes(env, b1, "the pipe gone")
    assert len(b1.opens(cid)) == 1


def test_h2_stream_reset_detaches_and_resumes(env):
    """WSPersistResumeWindow: an h2 WebSocket whose stream is reset
    detaches its session (it held an h2 worker, which goes on with it);
    the same h2 connection's other stream works meanwhile, and an
    HTTP/1.1 connection resumes the session with its count: every
    message after it, once, in order, on the same backend connection."""
    b1 = env.backend("b1")
    start(env, [b1], False, "WSPersistResumeWindow 30")
    cid = new_id()
    c = H2Client(env)
    try:
        ws = H2WS(c, cid)
        assert hget(ws.headers, "x-ws-persist-session") == "new", ws.headers
        ws.send("count:60:5")
        got = [ws.recv() for _ in range(10)]
        c.reset(ws.sid)
        c.pump(0.2)
        wait_until(lambda: env.httpd.log_lines(
            r"client %s .*session detached" % cid), 15, what="detached")
        H2WS(c, new_id()).echo("another stream")
    finally:
        c.close()

    async def resume():
        async with connect(env, cid, extra_headers={
                "X-WS-Persist-Received": str(len(got))}) as ws1:
            assert hget(ws1.response_headers,
                        "X-WS-Persist-Session") == "resumed"
            return [await asyncio.wait_for(ws1.recv(), 20)
                    for _ in range(60 - len(got))]

    got += asyncio.run(resume())
    assert got == ["c%d" % i for i in range(1, 61)]
    assert len(b1.opens(cid)) == 1


def test_h2_graceful_stop_closes_with_1001(env):
    """graceful-stop with an h2 WebSocket open: it is relayed on while the
    server stops, closed with 1001 ("server stopping") on both hops a
    second before GracefulShutdownTimeout, its stream ends, and the child
    exits by itself (mod_http2 waits for the stream's worker, which is
    the pipe's)."""
    b1 = env.backend("b1")
    start(env, [b1])
    c = H2Client(env)
    ws = H2WS(c, new_id())
    ws.echo("before the stop")
    kids = env.httpd.children()
    env.httpd.proc.send_signal(signal.SIGWINCH)
    time.sleep(GRACEFUL_S / 2)
    ws.echo("still relayed while the server stops")
    assert ws.recv(GRACEFUL_S + 5) == ("close", 1001, "server stopping")
    ws.send_frame(H2WS.CLOSE, close_payload(1001))
    ws.wait_ended()
    c.close()
    wait_until(lambda: not any(env.httpd._running(k) for k in kids),
               GRACEFUL_S, what="the child to exit")
    assert not env.httpd.log_lines(r"still did not exit"), \
        "httpd had to kill the child"
    wait_until(lambda: b1.closes(), 10, what="b1's close")
    assert b1.closes()[0]["code"] == 1001


def test_http11_websocket_with_mod_http2_loaded(env):
    """mod_http2 loaded, h2/h2c offered and H2WebSockets on: an
    ordinary HTTP/1.1 WebSocket client, ws:// and wss://, still
    connects, echoes and holds one pipe."""
    b1 = env.backend("b1")
    start(env, [b1], ssl_on=True)
    ctx = ssl.create_default_context(cafile=str(env.make_cert()))

    async def run():
        async with connect(env) as ws:
            assert (await whoami(ws))["name"] == "b1"
            await echo(ws, "over http/1.1")
            await echo(ws, b"\\x00\\x01" * 50000)
            assert counts(env, b1)[:3] == (1, 1, 1)
        async with connect(env, scheme="wss", ssl=ctx) as ws:
            assert (await whoami(ws))["name"] == "b1"
            await echo(ws, "over tls http/1.1")
        assert len(b1.opens()) == 2
    asyncio.run(run())
    assert env.httpd.log_lines(REFUSAL_RE) == []
