"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT) with mod_http2's
H2WebSockets on: httpd 2.4.71 hands such a stream to the handler as an
HTTP/1.1-style upgrade on a secondary connection (r->connection->master),
which has no socket a pipe could poll. The handler refuses it with 501
before any pipe exists; HTTP/1.1 WebSockets on the same server are
unaffected.

The RFC 8441 client is python3-h2 on a plain socket: cleartext HTTP/2
with prior knowledge (h2c), and h2 over TLS chosen by ALPN."""

import asyncio
import http.client
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import h2.settings

from wsp_env import (HOST, MODDIR, await_until, connect, echo, new_id,
                     wait_until, whoami)

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
REFUSAL_RE = (r"\[ws_persist:info\] .* ws_persist: client - \(127\.0\.0\.1\) "
              r"backend -: 501: WebSockets over HTTP/2 are not supported")


def start(env, backends, ssl_on=False):
    env.start_httpd(H2 + env.location("/ws/", backends,
                                      "WSPersistConnectTimeout 5"),
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
    """python3-h2 on a blocking socket: h2c with prior knowledge, or h2
    over TLS with ALPN."""

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
        self.streams = {}      # id: {"headers", "ended", "reset"}
        self.goaway = None
        self.conn.initiate_connection()
        self._flush()
        while self.server_settings is None:
            self._pump()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump(self):
        """Read once from the socket and account for the events."""
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("nothing from the server within %ss; "
                                 "streams: %r" % (self.timeout, self.streams)
                                 ) from None
        if not data:
            raise AssertionError("the server closed the HTTP/2 connection; "
                                 "streams: %r, goaway: %r"
                                 % (self.streams, self.goaway))
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
                self.conn.acknowledge_received_data(
                    ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self._flush()

    def connect_ws(self, path):
        """Send an extended CONNECT for a WebSocket to path; the stream
        id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {"headers": None, "ended": False, "reset": None}
        self.conn.send_headers(sid, [
            (":method", "CONNECT"), (":protocol", "websocket"),
            (":scheme", self.scheme), (":path", path),
            (":authority", self.authority),
            ("sec-websocket-version", "13")])
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
            self._pump()
        return {s: (self.streams[s]["headers"] or {}).get(":status")
                for s in sids}

    def close(self):
        try:
            self.conn.close_connection()
            self._flush()
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------


def run_extended_connect_refused(env, tls):
    b1 = env.backend("b1")
    start(env, [b1], ssl_on=tls)
    c = H2Client(env, tls=tls)
    try:
        assert c.server_settings.get(ENABLE_CONNECT_PROTOCOL) == 1, \
            "no SETTINGS_ENABLE_CONNECT_PROTOCOL=1 from mod_http2: %r" \
            % c.server_settings
        sid = c.connect_ws("/ws/" + new_id())
        status = c.wait([sid])[sid]
        assert status == "501", c.streams[sid]
    finally:
        c.close()
    lines = wait_until(lambda: env.httpd.log_lines(REFUSAL_RE), 10,
                       what="the handler's info line")
    assert len(lines) == 1, lines
    assert "HTTP/2" in lines[0]
    assert b1.opens() == []


def test_h2c_extended_connect_refused_501(env):
    """h2c with prior knowledge: the server advertises extended CONNECT,
    and the handler answers a WebSocket stream 501 with an info line."""
    run_extended_connect_refused(env, tls=False)


def test_h2_tls_extended_connect_refused_501(env):
    """The same over TLS, h2 chosen by ALPN."""
    run_extended_connect_refused(env, tls=True)


def test_h2_streams_leave_no_pipe_nor_id(env):
    """20 refused WebSocket streams leave no live pipe, no handshake at
    the backend, and no client id held: each id then connects over
    HTTP/1.1 and echoes (no 409)."""
    b1 = env.backend("b1")
    start(env, [b1])
    ids = [new_id() for _ in range(20)]
    c = H2Client(env)
    try:
        assert c.server_settings.get(ENABLE_CONNECT_PROTOCOL) == 1, \
            c.server_settings
        sids = [c.connect_ws("/ws/" + cid) for cid in ids]
        statuses = c.wait(sids)
        # while the HTTP/2 connection is still open
        assert counts(env, b1) == (0, 0, 0, 0), \
            "pipes left by the streams (process, pool, backend, served)"
        assert b1.opens() == []
    finally:
        c.close()
    assert counts(env, b1) == (0, 0, 0, 0)
    assert b1.opens() == []
    assert sorted(statuses.values()) == ["501"] * len(ids), statuses
    assert len(env.httpd.log_lines(REFUSAL_RE)) == len(ids)

    async def run():
        for n, cid in enumerate(ids):
            async with connect(env, cid) as ws:
                me = await whoami(ws)
                assert me["name"] == "b1"
                await echo(ws, "after h2 %d" % n)
                assert counts(env, b1) == (1, 1, 1, n + 1)
            await await_until(lambda: counts(env, b1)[0] == 0, 15,
                              what="the HTTP/1.1 pipe counted out")
        # exactly one handshake per id, all of them HTTP/1.1
        for cid in ids:
            assert len(b1.opens(cid)) == 1, cid
    asyncio.run(run())


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
            await echo(ws, b"\x00\x01" * 50000)
            assert counts(env, b1)[:3] == (1, 1, 1)
        async with connect(env, scheme="wss", ssl=ctx) as ws:
            assert (await whoami(ws))["name"] == "b1"
            await echo(ws, "over tls http/1.1")
        assert len(b1.opens()) == 2
    asyncio.run(run())
    assert env.httpd.log_lines(REFUSAL_RE) == []
