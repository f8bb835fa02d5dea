"""wss:// backends through mod_ssl's support for outgoing connections
(DESIGN §1): SSLProxyEngine and the other SSLProxy* directives of the
virtual host decide whether and how the proxy speaks TLS to a backend.

Each test makes its own PKI with the openssl CLI: a test CA and a rogue CA,
server certificates for 127.0.0.1 signed by either, and one for another
name. The backends are t/backend.py with --tls-cert/--tls-key."""

import asyncio
import os
import random
import re
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest

import wsp_env
from wsp_env import (BACKEND, HOST, PYTHON, Backend, await_until,
                     connect, echo, hget, new_id, recv, rejected, wait_until,
                     whoami)

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def expect_503(env, timeout_ms, backend, why):
    """The lines of a 503 whose every attempt failed at backend's
    handshake for why (a regex)."""
    env.expect_error(r"backend -: no backend completed a handshake within "
                     r"%d ms: answering 503$" % timeout_ms)
    env.expect_warn(r"ws_persist: client \S+ \(\S+\) backend %s: handshake "
                    r"failed: %s$" % (re.escape(backend.url), why))


TLS_REFUSED = (r"TLS handshake failed \(certificate not trusted or not for "
               r"this host, or no common protocol: mod_ssl logs why, at "
               r"LogLevel ssl:info\)")


def openssl(*args):
    subprocess.run(["openssl"] + [str(a) for a in args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=60)


class Pki:
    """Two CAs and server certificates, made at run time in env.root/pki:
    good (127.0.0.1, by the test CA), rogue (127.0.0.1, by the rogue CA),
    other (other.example, by the test CA)."""

    def __init__(self, root):
        self.dir = Path(root) / "pki"
        self.dir.mkdir(exist_ok=True)
        for ca in ("ca", "rogue-ca"):
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", self.dir / (ca + ".key"),
                    "-out", self.dir / (ca + ".pem"), "-days", "2",
                    "-subj", "/CN=wsp test %s" % ca)
        self.ca = self.dir / "ca.pem"
        self.good = self._leaf("good", "ca", HOST,
                               "IP:%s,DNS:localhost" % HOST)
        self.rogue = self._leaf("rogue", "rogue-ca", HOST,
                                "IP:%s,DNS:localhost" % HOST)
        self.other = self._leaf("other", "ca", "other.example",
                                "DNS:other.example")

    def _leaf(self, name, ca, cn, san):
        d = self.dir
        ext = d / (name + ".ext")
        ext.write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                       "extendedKeyUsage=serverAuth\n" % san)
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", d / (name + ".key"), "-out", d / (name + ".csr"),
                "-subj", "/CN=%s" % cn)
        openssl("x509", "-req", "-in", d / (name + ".csr"),
                "-CA", d / (ca + ".pem"), "-CAkey", d / (ca + ".key"),
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                "-days", "2", "-extfile", ext, "-out", d / (name + ".pem"))
        return d / (name + ".pem"), d / (name + ".key")


@pytest.fixture
def pki(env):
    return Pki(env.root)


class TlsBackend(Backend):
    """t/backend.py serving wss:// with a certificate of the test's PKI."""

    def __init__(self, env, name, port, cert):
        super().__init__(env, name, port)
        self.cert, self.key = cert

    @property
    def url(self):
        return "wss://%s:%d/echo/" % (HOST, self.port)

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [PYTHON, str(BACKEND), "--port", str(self.port),
               "--name", self.name, "--log", str(self.log_path),
               "--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)


def tls_backend(env, name, cert):
    be = TlsBackend(env, name, env.port(), cert)
    env.backends.append(be)
    return be.start()


def proxy_tls(pki, *extra):
    """mod_ssl's proxy side at server level, trusting the test CA only."""
    lines = ["SSLProxyEngine on", "SSLProxyVerify require",
             'SSLProxyCACertificateFile "%s"' % pki.ca]
    return "\n".join(lines + list(extra)) + "\n"


class HungServer:
    """Accepts TCP connections and records what arrives, never answers:
    a backend whose TLS handshake does not finish."""

    def __init__(self, env):
        self.port = env.port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, self.port))
        self.sock.listen(16)
        self.received = b""
        self.first_bytes = []
        self.conns = 0
        self.ended = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "wss://%s:%d/echo/" % (HOST, self.port)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
            threading.Thread(target=self._read, args=(c,),
                             daemon=True).start()

    def _read(self, c):
        first = True
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    d = b""
                if not d:
                    with self.lock:
                        self.ended += 1
                    return
                with self.lock:
                    if first:
                        self.first_bytes.append(d[:1])
                        first = False
                    self.received += d

    def hellos(self):
        """Connections that began with a TLS handshake record (never
        clear text); an AssertionError for one that did not."""
        with self.lock:
            assert all(b == b"\x16" for b in self.first_bytes), \
                self.first_bytes
            return len(self.first_bytes)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("protocol", ["TLSv1.2", "TLSv1.3"])
def test_wss_backend_echo(env, pki, protocol):
    """Echo through a wss:// backend whose certificate the test CA signed,
    over TLS 1.2 (two round trips of handshake) and 1.3; the backend sees
    the usual handshake request."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(proxy_tls(pki, "SSLProxyProtocol -all +" + protocol)
                    + env.location("/ws/", [b1]), ssl=True)

    async def run():
        cid = new_id()
        async with connect(env, cid) as ws:
            await echo(ws, "over tls to the backend")
            await echo(ws, os.urandom(70000))
            me = await whoami(ws)
            assert me["name"] == "b1"
            assert me["path"] == "/echo/" + cid
            assert hget(me["headers"], "X-WS-Persist-Client-Id") == cid
            assert hget(me["headers"], "X-Forwarded-Proto") == "http"
        assert [hget(o["headers"], "X-WS-Persist-Resume")
                for o in b1.opens(cid)] == ["0"]
    asyncio.run(run())


def test_wss_failover_replays_buffer(env, pki):
    """Two wss:// backends; the client's is SIGKILLed while the spare is
    stopped (its TCP accepts, its TLS handshake waits): the client stays
    open, what it sends meanwhile is buffered, and once the spare answers
    it gets all of it, in order, once."""
    b1 = tls_backend(env, "b1", pki.good)
    b2 = tls_backend(env, "b2", pki.good)
    env.start_httpd(proxy_tls(pki) + env.location("/ws/", [b1, b2], *FAST),
                    ssl=True)
    backends = {"b1": b1, "b2": b2}
    cid = new_id()
    env.expect_failover(cid, messages="0")

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "before")
        victim = backends[(await whoami(ws))["name"]]
        spare = b2 if victim is b1 else b1
        # the victim may be tried again while the spare hangs
        env.expect_refused(victim, cid)
        spare.pause()
        victim.kill()
        # nothing was in flight at the kill (whoami came back); what the
        # client sends once the proxy has seen it is all buffered
        await await_until(lambda: env.httpd.log_lines(
            r"client %s .* backend interrupted " % cid), 30,
            what="the proxy to see the kill")
        outage = ["outage-%d" % i for i in range(20)]
        for m in outage:
            await ws.send(m)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert ws.open
        spare.resume()
        got = [await recv(ws, 30) for _ in outage]
        assert got == outage
        me = await whoami(ws)
        assert me["name"] == spare.name
        assert hget(me["headers"], "X-WS-Persist-Resume") == "1"
        assert [m["head"] for m in spare.messages(cid)] == \
            outage + ["whoami"]
        await echo(ws, "after")
        await ws.close()
    asyncio.run(run())


def test_untrusted_backend_refused(env, pki):
    """A backend whose certificate the configured CA did not sign: mod_ssl
    refuses the handshake, the client gets 503 within the connect timeout
    and the error log names the backend."""
    rogue = tls_backend(env, "rogue", pki.rogue)
    env.start_httpd(proxy_tls(pki) + env.location(
        "/ws/", [rogue], "WSPersistConnectTimeout 2",
        "WSPersistRetry 100ms 500ms"), ssl=True)
    expect_503(env, 2000, rogue, TLS_REFUSED)
    env.expect_error(r"AH02039: Certificate Verification: Error")

    async def run():
        e = await rejected(env)
        assert e.status_code == 503
    asyncio.run(run())
    lines = env.httpd.log_lines(r"TLS handshake failed")
    assert lines and all(rogue.url in l for l in lines), \
        env.httpd.log_text()
    assert env.httpd.log_lines(r"AH02039: Certificate Verification")
    assert rogue.opens() == []


@pytest.mark.parametrize("check", ["on", "off"])
def test_peer_name_check(env, pki, check):
    """A certificate of the trusted CA for another name: refused while
    SSLProxyCheckPeerName is on (mod_ssl's check after the handshake
    runs), accepted with it off."""
    other = tls_backend(env, "other", pki.other)
    env.start_httpd(proxy_tls(pki, "SSLProxyCheckPeerName " + check)
                    + env.location("/ws/", [other],
                                   "WSPersistConnectTimeout 2"), ssl=True)

    async def run():
        if check == "on":
            expect_503(env, 2000, other, TLS_REFUSED)
            e = await rejected(env)
            assert e.status_code == 503
            assert [l for l in env.httpd.log_lines(r"TLS handshake failed")
                    if other.url in l], env.httpd.log_text()
            assert other.opens() == []
        else:
            async with connect(env) as ws:
                await echo(ws, "name not checked")
    asyncio.run(run())


def test_large_messages_both_ways(env, pki):
    """1 MB and 3 MB messages, text and binary, each way and several in
    flight at once, arrive intact through TLS."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(proxy_tls(pki) + env.location("/ws/", [b1]), ssl=True)

    async def run():
        async with connect(env) as ws:
            await echo(ws, os.urandom(1 << 20), timeout=60)
            await echo(ws, "t" * (1 << 20), timeout=60)
            await echo(ws, os.urandom(3 << 20), timeout=60)
            # backend to client only: a 2 MB answer to a short command
            await ws.send("big:%d" % (2 << 20))
            assert await recv(ws, 60) == "b" * (2 << 20)
            # four 1 MB messages in flight each way
            msgs = [os.urandom(1 << 20) for _ in range(4)]
            for m in msgs:
                await ws.send(m)
            for m in msgs:
                assert await recv(ws, 60) == m
            await echo(ws, "small after large")
    asyncio.run(run())


def test_backend_that_stops_reading(env, pki):
    """The backend stops reading while the client sends 12 MB: records
    the socket does not take wait in the proxy (it asks for POLLOUT), and
    once the backend reads again every message comes back whole, in
    order, once."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(proxy_tls(pki) + env.location(
        "/ws/", [b1], "WSPersistBufferLimit 64M"), ssl=True)

    async def run():
        async with connect(env) as ws:
            await echo(ws, "before")
            b1.pause()
            msgs = [os.urandom(256 * 1024 - i * 997) for i in range(48)]
            for m in msgs:
                await ws.send(m)
            await asyncio.sleep(0.5)
            b1.resume()
            for i, m in enumerate(msgs):
                got = await recv(ws, 60)
                assert got == m, "message %d differs" % i
            await echo(ws, "after")
    asyncio.run(run())


def test_backend_bursts_arrive_whole(env, pki):
    """Bursts of large backend messages, read by the client at once or
    late: every message of every burst arrives, none waits for the
    backend's next bytes. No pings, so nothing else wakes the pipe."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(proxy_tls(pki) + env.location(
        "/ws/", [b1], "WSPersistPingInterval 0"), ssl=True)

    async def run():
        rnd = random.Random(7)
        async with connect(env) as ws:
            for burst in range(120):
                sizes = [rnd.randint(1, 300000)
                         for _ in range(rnd.randint(1, 12))]
                for n in sizes:
                    await ws.send("big:%d" % n)
                await asyncio.sleep(rnd.choice([0, 0, 0.05, 0.3]))
                for i, n in enumerate(sizes):
                    try:
                        got = await recv(ws, 10)
                    except AssertionError:
                        raise AssertionError(
                            "burst %d: message %d of %d never came"
                            % (burst, i + 1, len(sizes))) from None
                    assert got == "b" * n
    asyncio.run(run())


def test_proxy_engine_off_refused(env, pki):
    """Without SSLProxyEngine on no TLS connection is made, nothing goes
    to the backend in clear text and the client gets 503."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(env.location("/ws/", [b1], "WSPersistConnectTimeout 2"),
                    ssl=True)
    expect_503(env, 2000, b1, r"TLS: needs mod_ssl and SSLProxyEngine on "
               r"in this virtual host")
    env.expect_error(r"AH01961: +failed to enable ssl support")

    async def run():
        e = await rejected(env)
        assert e.status_code == 503
    asyncio.run(run())
    assert env.httpd.log_lines(r"SSLProxyEngine on in this virtual host")
    assert b1.opens() == []


def test_hung_tls_handshake_blocks_no_one(env, pki):
    """Failovers whose TLS handshake the backend never answers wait on
    the socket, not in the thread: with one event loop thread, another
    client's echoes go on while those handshakes are still pending. A
    client that gives up meanwhile ends its pipe cleanly."""
    g = tls_backend(env, "g", pki.good)
    a = tls_backend(env, "a", pki.good)
    hung = HungServer(env)
    try:
        # one pool each, so that both pick a (less loaded than hung: first)
        hangs = ["/hang1/", "/hang2/"] if wsp_env.DRIVER == "event" \
            else ["/hang1/"]
        env.start_httpd(
            "WSPersistEventLoopThreads 1\n" + proxy_tls(pki)
            + env.location("/ws/", [g])
            + "".join(env.location(h, [a, hung.url],
                                   "WSPersistConnectTimeout 30",
                                   "WSPersistRetry 20s 20s")
                      for h in hangs), ssl=True)
        env.expect_failover(backend=a, messages="0")  # its hung pipes

        async def run():
            b = await connect(env)
            await echo(b, "b first")
            stuck = [await connect(env, location=h) for h in hangs]
            # the other pipes wait in the same loop thread too
            for ac in stuck:
                assert (await whoami(ac))["name"] == "a"
            a.kill()
            await await_until(lambda: hung.hellos() == len(stuck), 20,
                              what="TLS ClientHellos at the hung backend")
            for i in range(5):
                await echo(b, "b during the hung handshakes %d" % i)
            assert hung.conns == len(stuck) and hung.ended == 0, \
                "a hung handshake ended before the other client's echoes"
            assert all(ac.open for ac in stuck)
            for ac in stuck:
                await ac.close()
            await await_until(lambda: hung.ended == len(stuck), 20,
                              what="the proxy to drop the hung handshakes")
            await echo(b, "b after")
            await b.close()
        asyncio.run(run())
    finally:
        hung.close()


def test_hung_tls_handshake_times_out(env, pki):
    """Each TLS handshake the backend never answers is given up at the
    per-attempt deadline (the connection is closed, mod_ssl unwinds) and
    the client gets 503 within the connect timeout."""
    hung = HungServer(env)
    try:
        env.start_httpd(proxy_tls(pki) + env.location(
            "/ws/", [hung.url], "WSPersistConnectTimeout 3",
            "WSPersistRetry 10ms 10ms"), ssl=True)
        expect_503(env, 3000, hung, r"handshake timed out")

        async def run():
            e = await rejected(env)
            assert e.status_code == 503
        asyncio.run(run())
        wait_until(lambda: hung.ended == hung.conns, 10,
                   what="every hung handshake closed by the proxy")
        assert hung.hellos() == hung.conns >= 2
        assert len(env.httpd.log_lines(r"handshake failed: handshake "
                                       r"timed out")) >= 2
    finally:
        hung.close()


def test_session_resumes_over_wss_on_both_hops(env, pki):
    """WSPersistResumeWindow with TLS on both hops: a wss:// client whose
    connection is reset resumes its session, kept on the same wss://
    backend connection, with every message after its count."""
    b1 = tls_backend(env, "b1", pki.good)
    env.start_httpd(proxy_tls(pki) + env.location(
        "/ws/", [b1], "WSPersistResumeWindow 30"), ssl=True)
    ctx = ssl.create_default_context(cafile=str(env.make_cert()))
    cid = new_id()

    async def run():
        ws = await connect(env, cid, scheme="wss", ssl=ctx)
        await ws.send("count:80:2")
        got = [await asyncio.wait_for(ws.recv(), 20) for _ in range(25)]
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        ws.transport.abort()
        await asyncio.sleep(0.3)
        async with connect(env, cid, scheme="wss", ssl=ctx, extra_headers={
                "X-WS-Persist-Received": str(len(got))}) as ws2:
            assert hget(ws2.response_headers,
                        "X-WS-Persist-Session") == "resumed"
            got += [await asyncio.wait_for(ws2.recv(), 20)
                    for _ in range(80 - len(got))]
            await echo(ws2, "still there")
        return got

    assert asyncio.run(run()) == ["c%d" % i for i in range(1, 81)]
    assert len(b1.opens(cid)) == 1


def test_takeover_during_a_backend_tls_handshake(env, pki):
    """A replace takeover while the pipe's failover is in the middle of a
    TLS handshake with a wss:// backend (mod_ssl runs it on a coroutine of
    the driver thread's own): the old driver ends that handshake, the new
    one starts afresh, and the session goes on on the next backend."""
    a = tls_backend(env, "a", pki.good)
    hung = HungServer(env)
    c = TlsBackend(env, "c", env.port(), pki.good)
    env.backends.append(c)
    env.start_httpd(proxy_tls(pki) + env.location(
        "/ws/", [a, hung, c], "WSPersistDuplicateClient replace",
        "WSPersistConnectTimeout 20", "WSPersistRetry 50ms 200ms"),
        ssl=True)
    cid = new_id()
    env.expect_failover(cid, a)
    env.expect_refused(c, cid)
    env.expect_warn(r"client %s \(\S+\) backend %s: handshake failed: "
                    r"handshake timed out" % (cid, re.escape(hung.url)))

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "on a")
        a.kill()
        await await_until(lambda: hung.hellos() >= 1, 15,
                          what="a TLS handshake with the hung backend")
        async with connect(env, cid) as ws2:
            c.start()
            await echo(ws2, "after the takeover", timeout=40)
            me = await whoami(ws2)
        return me

    assert asyncio.run(run())["name"] == "c"
    hung.close()
