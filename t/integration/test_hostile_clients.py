"""Clients that misbehave: a slowloris handshake, a client that never
reads while its backend floods, a flood of messages during an outage, a
run of 10,000 bad handshakes, and 200 pipes each holding a full buffer.
Each checks what the proxy must guarantee: other clients are served, the
memory a pipe holds stays within its caps, no child dies."""

import asyncio
import concurrent.futures
import re
import socket
import struct
import time

import pytest
import websockets

from wsp_env import (HOST, MODDIR, RawWS, build_frame, close_payload,
                     connect, echo, new_id, send_request, read_head,
                     upgrade_headers, wait_until)
from wsp_hostile import MEMORY_CHECKED, child_pid, hostile, rss_kb

MB = 1024


def test_slowloris_handshake(env):
    """Clients that send their upgrade request a byte at a time hold no
    one else up, and mod_reqtimeout (the documented defence) closes them.
    A pipe's connection loses reqtimeout once upgraded."""
    be = env.backend("b1")
    env.start_httpd(
        "LoadModule reqtimeout_module %s/mod_reqtimeout.so\n"
        "RequestReadTimeout header=2 body=2\n" % MODDIR
        + env.location("/ws/", [be]))
    slow = []
    for _ in range(30):
        s = socket.create_connection((HOST, env.httpd.port), timeout=30)
        s.sendall(("GET /ws/%s HTTP/1.1\r\nHost: %s\r\n"
                   % (new_id(), HOST)).encode())
        slow.append(s)
    rest = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    closed = set()

    async def run():
        async with connect(env) as ws:
            for i in range(len(rest)):
                for k, s in enumerate(slow):
                    if k in closed:
                        continue
                    try:
                        s.sendall(rest[i:i + 1])
                    except OSError:
                        closed.add(k)
                await echo(ws, "served while slow clients dribble %d" % i)
                await asyncio.sleep(0.3)
                if len(closed) == len(slow):
                    break
            # the pipe outlives the header timeout: reqtimeout is gone
            await echo(ws, "still here")
    asyncio.run(run())

    def all_closed():
        for k, s in enumerate(slow):
            if k in closed:
                continue
            s.setblocking(False)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data == b"" or data.startswith(b"HTTP/1.1 408"):
                closed.add(k)
        return len(closed) == len(slow)
    wait_until(all_closed, 60, what="the slow clients to be closed")
    for s in slow:
        s.close()


def test_client_never_reads_backpressure(env):
    """The backend floods a client that never reads: the proxy stops
    reading the backend (the flood stalls far short of its end) and the
    child's memory grows by no more than the pipe's output cap and its
    buffers; then the client reads and gets every frame, in order."""
    total = 64 << 20
    flood = hostile(env, "flood", "flood", flood_bytes=total)
    env.start_httpd(env.location("/ws/", [flood.url],
                                 "WSPersistPingInterval 0",
                                 "WSPersistMaxMessageSize 1M"))
    child = child_pid(env)
    before = rss_kb(child)
    ws = RawWS(env.httpd.port, "/ws/" + new_id(), timeout=60)
    assert ws.handshake().status == 101
    samples = []

    def stalled():
        samples.append(flood.sent()[0])
        return len(samples) > 6 and samples[-1] > 0 \
            and samples[-1] == samples[-6]
    wait_until(stalled, 60, interval=0.25, what="the flood to stall")
    sent, frames, done = flood.sent()
    grown = rss_kb(child) - before
    print("flood stalled at %d MB of %d MB; child RSS +%d KB"
          % (sent >> 20, total >> 20, grown))
    assert not done and sent < total // 2, \
        "the proxy kept reading a backend its client does not read"
    # WSP_OUT_HIGH (256K) + one message + the backend read buffer (64K),
    # with room for allocator slack
    assert grown < 16 * MB or not MEMORY_CHECKED, \
        "child grew by %d KB" % grown

    # every message, whole and in order (the proxy builds its own frames:
    # a message may reach the client cut other than the backend cut it)
    n = 0
    while n < total // (64 * 1024):
        f = ws.recv_frame(60)
        assert f is not None, "connection ended after %d messages" % n
        fin, rsv, op, payload = f
        assert op == RawWS.OP_BINARY
        while not fin:
            f = ws.recv_frame(60)
            assert f is not None and f[2] == RawWS.OP_CONT, f
            fin, payload = f[0], payload + f[3]
        assert len(payload) == 64 * 1024
        assert struct.unpack("!Q", payload[:8])[0] == n
        n += 1
    assert flood.sent()[2], "the flood finished once the client read"
    ws.close()


def test_outage_flood_1013_memory_bounded(env):
    """With no backend, a client that floods small messages is cut off at
    WSPersistBufferLimit with 1013, and the child holds no more than
    that meanwhile."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be], "WSPersistBufferLimit 256K",
                                 "WSPersistConnectTimeout 60",
                                 "WSPersistRetry 1s 5s"))
    cid = new_id()
    env.expect_error(r"client %s .* buffer limit of 262144 bytes reached "
                     r"with no backend: closing with 1013$" % cid)
    env.expect_warn(r"client %s .* backend interrupted \(connection closed"
                    r"\); failing over with 0 message" % cid)
    child = child_pid(env)
    ws = RawWS(env.httpd.port, "/ws/" + cid, timeout=30)
    assert ws.handshake().status == 101
    ws.send(RawWS.OP_TEXT, b"hello")
    assert ws.recv_frame()[3] == b"hello"
    be.kill()
    # the flood starts once the pipe knows: had the live pipe's buffer
    # filled first (backpressure), the failover would keep it paused
    # instead (until a backend or the connect timeout)
    wait_until(lambda: env.httpd.log_lines("backend interrupted"), 30,
               what="the pipe to notice the outage")
    before = rss_kb(child)
    key = b"\x11\x22\x33\x44"
    one = build_frame(RawWS.OP_TEXT, b"m" * 100, key=key)
    burst = one * 2000                        # 212 KB per burst
    try:
        for _ in range(40):                   # 8.5 MB in all
            ws.send_raw(burst)
    except OSError:
        pass                                  # closed under our feet
    code, reason, _ = ws.recv_close(30)
    grown = rss_kb(child) - before
    print("closed with %s %r; child RSS +%d KB" % (code, reason, grown))
    assert code == 1013
    assert grown < 8 * MB or not MEMORY_CHECKED, \
        "child grew by %d KB" % grown
    ws.close()


BAD_HANDSHAKES = [
    # (what, method, path, headers, expected status)
    ("plain GET", "GET", None, lambda: {"Host": HOST}, 426),
    ("bad key", "GET", None, lambda: upgrade_headers("not-a-key"), 400),
    ("version 8", "GET", None, lambda: upgrade_headers(
        Sec_WebSocket_Version="8"), 426),
    ("POST", "POST", None, lambda: upgrade_headers(), 400),
    ("no Connection", "GET", None, lambda: upgrade_headers(Connection=None),
     400),
    ("id not a UUID", "GET", "/ws/%0d%0aX-Evil:%201", lambda:
     upgrade_headers(), 400),
]


def _bad_handshake(port, i):
    what, method, path, headers, want = \
        BAD_HANDSHAKES[i % len(BAD_HANDSHAKES)]
    with socket.create_connection((HOST, port), timeout=30) as s:
        send_request(s, method, path or "/ws/" + new_id(), headers())
        r = read_head(s, 30)
    return what, r.status, want


def _bad_run(port, start, count):
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for what, got, want in ex.map(lambda i: _bad_handshake(port, i),
                                      range(start, start + count)):
            assert got == want, "%s: %d, expected %d" % (what, got, want)


def test_10000_bad_handshakes(env):
    """Every bad handshake is answered with its status, no child dies and
    the child's memory is back where it was after the first thousand."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]) + "LogLevel warn\n")
    child = child_pid(env)
    _bad_run(env.httpd.port, 0, 1000)          # warm-up: pools, threads
    before = rss_kb(child)
    t0 = time.monotonic()
    _bad_run(env.httpd.port, 1000, 9000)
    after = rss_kb(child)
    print("10,000 bad handshakes, the last 9,000 in %.1f s; child RSS "
          "%d KB -> %d KB" % (time.monotonic() - t0, before, after))
    assert child_pid(env) == child, "the child was replaced"
    assert after - before < 2 * MB or not MEMORY_CHECKED, \
        "child grew by %d KB" % (after - before)

    async def run():
        async with connect(env) as ws:
            await echo(ws, "a good client after 10,000 bad ones")
    asyncio.run(run())


def test_200_full_buffers_memory(env):
    """200 pipes, each holding most of a 256K buffer during an outage: the
    child grows, from before the outage to full buffers, by less than 200
    x the cap plus 10 MB (what the allocator keeps around the buffers;
    the child's own footprint and the 200 connections were there
    before)."""
    cap = 256 * 1024
    pipes = 200
    slack = 10 * MB
    be = env.backend("b1")
    env.expect_warn(r"backend %s: backend interrupted \(connection closed"
                    r"\); failing over with 0 message" % re.escape(be.url))
    env.start_httpd(env.location("/ws/", [be], "WSPersistBufferLimit 256K",
                                 "WSPersistMaxMessageSize 64K",
                                 "WSPersistConnectTimeout 120",
                                 "WSPersistRetry 5s 10s",
                                 "WSPersistPingInterval 0"))
    child = child_pid(env)
    # the cap charges what the frames hold in memory (wsp_frame_cost): a
    # 16 KB message read in 8000-byte pieces takes at most three 8 KB
    # blocks and their buckets, so 8 of them fill 200-250 KB of it
    msgs = [b"%04d" % i + b"f" * (16384 - 4) for i in range(7)]
    msgs.append(b"last" + b"f" * (16384 - 4))

    async def run():
        conns = []
        for _ in range(pipes):
            conns.append(await connect(env, max_queue=None))
        await asyncio.gather(*(echo(c, "up") for c in conns))
        start = rss_kb(child)
        be.kill()

        async def fill(c):
            for m in msgs:
                await c.send(m)
            # the proxy answers pings in order: all of it was read
            await asyncio.wait_for(await c.ping(), 60)
        await asyncio.gather(*(fill(c) for c in conns))
        full = rss_kb(child)
        limit = pipes * cap // 1024 + slack
        print("%d pipes x %d KB: child RSS %d KB before the outage, %d KB "
              "full: grew %d KB, limit %d KB" % (
                  pipes, cap // 1024, start, full, full - start, limit))
        assert full - start < limit or not MEMORY_CHECKED, \
            "child grew by %d KB" % (full - start)
        for c in conns:
            assert c.open, "a pipe was closed with %s" % c.close_code
        await asyncio.gather(*(c.close() for c in conns))
    asyncio.run(run())


def test_protocol_error_then_flood_logged_once(env):
    """A client that breaks the protocol and keeps sending: closed with
    1002, and one log line, not one per read (a client must not be able
    to fill the error log)."""
    be = env.backend("b1")
    env.start_httpd(env.location("/ws/", [be]))
    ws = RawWS(env.httpd.port, "/ws/" + new_id(), timeout=30)
    assert ws.handshake().status == 101
    flood = build_frame(RawWS.OP_TEXT, b"m" * 100, key=b"abcd") * 20000
    try:
        ws.send_raw(build_frame(RawWS.OP_TEXT, b"x", mask=False) + flood)
    except OSError:
        pass
    code, _, _ = ws.recv_close(30)
    ws.close()
    assert code == 1002
    lines = env.httpd.log_lines("client broke the protocol")
    assert len(lines) == 1, "%d log lines for one protocol error" % len(lines)


def test_backpressure_holds_at_most_the_limit(env):
    """A live backend that stops reading: the pipe stops reading its client
    at WSPersistBufferLimit. What it holds when that backend then dies
    (the failover's log line says) is at most the limit and one message."""
    import threading
    bad = hostile(env, "bad", "noread")
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [bad.url, good],
                                 "WSPersistBufferLimit 256K",
                                 "WSPersistPingInterval 0",
                                 "WSPersistConnectTimeout 5"))
    cid = new_id()
    env.expect_warn(r"client %s .* backend %s: backend interrupted \(("
                    r"connection closed|read failed|write failed)\); "
                    r"failing over " % (cid, re.escape(bad.url)))
    ws = RawWS(env.httpd.port, "/ws/" + cid, timeout=60)
    assert ws.handshake().status == 101
    frame = build_frame(RawWS.OP_TEXT, b"m" * 100, key=b"abcd")
    wrote = [0]

    def flood():
        try:
            while True:
                ws.sock.sendall(frame * 100)
                wrote[0] += len(frame) * 100
        except OSError:
            pass
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    samples = []

    def stalled():
        samples.append(wrote[0])
        return len(samples) > 8 and samples[-1] == samples[-8]
    wait_until(stalled, 60, interval=0.25, what="the proxy to stop reading")
    bad.kill()
    lines = wait_until(lambda: env.httpd.log_lines("backend interrupted"),
                       30, what="the failover")
    ws.close()
    t.join(10)
    held = int(re.search(r"(\d+) byte\(s\) buffered", lines[0]).group(1))
    assert held <= 256 * 1024 + 106, \
        "the pipe held %d bytes with a 262144-byte limit" % held
