#!/usr/bin/python3
"""An echo WebSocket backend for mod_ws_persist's tests and demo.

    /usr/bin/python3 t/backend.py --port N [--name NAME] [--subprotocols a,b]
                                  [--host 127.0.0.1] [--log FILE]
                                  [--tls-cert PEM --tls-key PEM]

Echoes every text and binary message unchanged, except these text
commands:

    close:<code>:<reason>   the backend closes the connection with that code
    whoami                  the backend answers with JSON: name, path (with
                            query), headers (of the handshake request),
                            subprotocol, pid and conn (connection number)
    frag:<n>:<text>         answers <text> as one message in n fragments
    halfmsg:<text>          sends <text> as the first fragment of a message
                            it never finishes (logs "sent-fragment")
    big:<n>                 answers a text message of n "b" characters
    count:<n>:<ms>[:<size>] sends n messages "c1".."c<n>" (padded with "."
                            to size characters), one every ms
                            milliseconds (0: at once), logging "counted"
                            when the last is sent

With --state DIR it is a backend that keeps session state (DESIGN 7,
WSPersistAck): per client id (X-WS-Persist-Client-Id) the file DIR/<id>
holds K, the number of client messages it has processed; backends sharing
DIR share the sessions. Its 101 answers X-WS-Persist-Received: K (not with
--no-received); the first message of a connection is then K+1, else the
request's X-WS-Persist-Next. Each data message it is sent is numbered so;
one numbered K or below was processed before and is dropped ("repeat"),
any other is processed: K is stored, "processed" logged, then it is
echoed. It acknowledges with a pong "wsp-ack:K" after every --ack-every
messages (0: only on SIGUSR1, which acknowledges everything processed).

    {"ev": "processed", "conn": N, "id": ..., "seq": S, "head": ...}
    {"ev": "repeat",    "conn": N, "id": ..., "seq": S}
    {"ev": "acked",     "conn": N, "id": ..., "k": K}

With --tls-cert and --tls-key it speaks wss:// (TLS with that certificate
chain and key). Prints "ready <name> <port>" on stdout once listening.
With --log, every event is appended to FILE as one JSON object per line,
flushed at once, so a test can prove what the backend saw:

    {"ev": "ready", ...}
    {"ev": "open",  "conn": N, "path": ..., "headers": {...}, "peer": port
                    of the proxy's end, ...}
    {"ev": "msg",   "conn": N, "type": "text"|"binary", "len": L,
                    "head": first 256 characters (binary: latin-1)}
    {"ev": "close", "conn": N, "code": C, "reason": R, "by": "peer"|"us"}

and, so that a test can tell what a backend SIGKILLed at any moment had
taken from its socket (DESIGN 3: a message completely written to a
backend that then fails may be lost, and only such a message):

    {"ev": "rx",    "conn": N, "len": L, "head": ...}
                    logged in the callback that read the message's last
                    byte from the socket (before websockets sees it): the
                    whole message is in the process
    {"ev": "rx-part", "conn": N, "head": ..., "under_way": bool,
                    "have": H, "frame": F, "buf": hex or null}
                    after a read that leaves something incomplete: H bytes
                    of a frame of F bytes (null: its header is not whole)
                    are in, and are "buf" when at most 4 KB; under_way:
                    earlier frames of this message are whole already
    {"ev": "echoed", "conn": N, "len": L, "head": ...}
                    the echo of a message (or a command's answer) is in
                    the kernel: nothing of it is left in the process

(heads of rx events are latin-1 of the payload's first 256 bytes; a text
message's head is the same as its "msg" head while it is ASCII).

Uses the legacy asyncio API of python3-websockets 10.x (Debian 12).
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import struct
import sys

import websockets
from websockets.legacy.server import WebSocketServerProtocol

HEAD_CHARS = 256
PART_BYTES = 4096       # an incomplete frame up to this size is logged whole


class RxLog:
    """What the proxy wrote into one connection, parsed as it is read:
    client-to-server frames after the HTTP request head. Logs each data
    message whose last byte has been read, and how far an incomplete one
    is from its end."""

    def __init__(self, backend, conn):
        self.backend = backend
        self.conn = conn
        self.buf = bytearray()
        self.in_head = True
        self.msg_head = None        # payload head of the message under way
        self.msg_len = 0

    def feed(self, data):
        self.buf += data
        if self.in_head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.buf[:end + 4]
            self.in_head = False
        while self.frame():
            pass
        if self.buf or self.msg_head is not None:
            h = self.header()
            self.backend.event(
                "rx-part", conn=self.conn, head=self.part_head(h),
                under_way=self.msg_head is not None, have=len(self.buf),
                frame=None if h is None else h[3] + h[2],
                buf=self.buf.hex() if len(self.buf) <= PART_BYTES else None)

    def header(self):
        """(opcode, fin, payload length, header length) or None."""
        b = self.buf
        if len(b) < 2:
            return None
        n, off = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = struct.unpack("!Q", b[2:10])[0], 10
        if b[1] & 0x80:
            off += 4
        return b[0] & 0x0F, bool(b[0] & 0x80), n, off

    def payload(self, h, upto):
        op, fin, n, off = h
        data = bytes(self.buf[off:off + min(n, upto)])
        if self.buf[1] & 0x80:
            key = self.buf[off - 4:off]
            data = bytes(c ^ key[i % 4] for i, c in enumerate(data))
        return data

    def frame(self):
        h = self.header()
        if h is None or len(self.buf) < h[3] + h[2]:
            return False
        op, fin, n, off = h
        if op in (1, 2) or (op == 0 and self.msg_head is not None):
            if op != 0:
                self.msg_head = self.payload(h, HEAD_CHARS)
                self.msg_len = 0
            elif len(self.msg_head) < HEAD_CHARS:
                self.msg_head += self.payload(
                    h, HEAD_CHARS - len(self.msg_head))
            self.msg_len += n
            if fin:
                self.backend.event("rx", conn=self.conn, len=self.msg_len,
                                   head=self.msg_head.decode("latin-1"))
                self.msg_head = None
        del self.buf[:off + n]
        return True

    def part_head(self, h):
        if self.msg_head is not None:
            return self.msg_head.decode("latin-1")
        if h is None or h[0] not in (1, 2):
            return ""
        return self.payload(h, HEAD_CHARS).decode("latin-1")


class LoggingProtocol(WebSocketServerProtocol):
    """websockets' server protocol that records, in the read callback
    itself, what it took from the socket (RxLog)."""

    backend = None

    def connection_made(self, transport):
        self.wsp_conn = self.backend.new_conn()
        self.wsp_rx = RxLog(self.backend, self.wsp_conn)
        super().connection_made(transport)

    def data_received(self, data):
        self.wsp_rx.feed(data)
        super().data_received(data)


class Backend:
    def __init__(self, args):
        self.name = args.name or "backend-%d" % args.port
        self.port = args.port
        self.host = args.host
        self.subprotocols = [p.strip() for p in args.subprotocols.split(",")
                             if p.strip()] if args.subprotocols else None
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.conns = 0
        self.state = args.state
        self.answer_received = not args.no_received
        self.ack_every = args.ack_every
        self.promised = {}          # client id: K answered in the 101
        self.live = set()           # (ws, client id) of stateful sessions
        self.ssl = None
        if args.tls_cert:
            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl.load_cert_chain(args.tls_cert, args.tls_key)

    def event(self, ev, **fields):
        if self.log is None:
            return
        rec = {"ev": ev, "name": self.name, "pid": os.getpid()}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    @staticmethod
    def headers_of(ws):
        out = {}
        for k, v in ws.request_headers.raw_items():
            out[k] = out[k] + ", " + v if k in out else v
        return out

    def load(self, cid):
        try:
            with open(os.path.join(self.state, cid)) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    def store(self, cid, k):
        path = os.path.join(self.state, cid)
        with open(path + ".tmp", "w") as f:
            f.write(str(k))
        os.replace(path + ".tmp", path)

    def extra_headers(self, path, request_headers):
        cid = request_headers.get("X-WS-Persist-Client-Id")
        if not self.state or not cid or not self.answer_received:
            return []
        self.promised[cid] = self.load(cid)
        return [("X-WS-Persist-Received", str(self.promised[cid]))]

    async def ack(self, ws, conn, cid):
        k = self.load(cid)
        try:
            await ws.pong(b"wsp-ack:%d" % k)
        except websockets.ConnectionClosed:
            return
        self.event("acked", conn=conn, id=cid, k=k)

    def ack_all(self):
        for ws, conn, cid in list(self.live):
            asyncio.ensure_future(self.ack(ws, conn, cid))

    async def stateful(self, ws, conn, headers):
        """The --state session: number, drop repeats, store, echo, ack."""
        cid = headers.get("X-WS-Persist-Client-Id")
        promised = self.promised.pop(cid, None)
        seq = promised + 1 if promised is not None else int(
            headers.get("X-WS-Persist-Next", "1"))
        me = (ws, conn, cid)
        self.live.add(me)
        try:
            async for msg in ws:
                k = self.load(cid)
                head = msg[:HEAD_CHARS]
                head = head if isinstance(head, str) else head.decode(
                    "latin-1")
                if seq <= k:
                    self.event("repeat", conn=conn, id=cid, seq=seq)
                    seq += 1
                    continue
                self.store(cid, seq)
                self.event("processed", conn=conn, id=cid, seq=seq,
                           head=head)
                seq += 1
                await self.echo(ws, conn, msg)
                if self.ack_every and (seq - 1) % self.ack_every == 0:
                    await self.ack(ws, conn, cid)
        finally:
            self.live.discard(me)

    def new_conn(self):
        self.conns += 1
        return self.conns

    async def echo(self, ws, conn, msg, reply=None):
        """Send the echo of msg (or reply, its answer); log it as echoed
        once nothing of it is left in the process."""
        await ws.send(msg if reply is None else reply)
        if ws.transport.get_write_buffer_size() == 0:
            head = msg[:HEAD_CHARS]
            self.event("echoed", conn=conn, len=len(msg),
                       head=head if isinstance(head, str)
                       else head.decode("latin-1"))

    async def count(self, ws, conn, n, ms, size="0"):
        try:
            for i in range(1, int(n) + 1):
                await ws.send(("c%d" % i).ljust(int(size), "."))
                if int(ms):
                    await asyncio.sleep(int(ms) / 1000)
            self.event("counted", conn=conn, n=int(n))
        except websockets.ConnectionClosed:
            pass

    async def handler(self, ws, path):
        conn = ws.wsp_conn
        headers = self.headers_of(ws)
        self.event("open", conn=conn, path=path, headers=headers,
                   subprotocol=ws.subprotocol, peer=ws.remote_address[1])
        print("open %s conn=%d path=%s client-id=%s resume=%s" % (
            self.name, conn, path, headers.get("X-WS-Persist-Client-Id"),
            headers.get("X-WS-Persist-Resume")), flush=True)
        closed_by = "peer"
        try:
            if self.state:
                await self.stateful(ws, conn, headers)
                return
            async for msg in ws:
                if isinstance(msg, str):
                    self.event("msg", conn=conn, type="text", len=len(msg),
                               head=msg[:HEAD_CHARS])
                    if msg == "whoami":
                        await self.echo(ws, conn, msg, json.dumps({
                            "name": self.name, "path": path,
                            "headers": headers, "subprotocol": ws.subprotocol,
                            "pid": os.getpid(), "conn": conn}))
                        continue
                    if msg.startswith("frag:"):
                        _, n, text = msg.split(":", 2)
                        n = int(n)
                        step = max(1, -(-len(text) // n))
                        await self.echo(ws, conn, msg, [
                            text[i:i + step]
                            for i in range(0, len(text), step)])
                        continue
                    if msg.startswith("halfmsg:"):
                        asyncio.ensure_future(self.half_message(
                            ws, conn, msg.split(":", 1)[1]))
                        continue
                    if msg.startswith("count:"):
                        asyncio.ensure_future(self.count(
                            ws, conn, *msg.split(":")[1:]))
                        continue
                    if msg.startswith("big:"):
                        await self.echo(ws, conn, msg,
                                        "b" * int(msg.split(":", 1)[1]))
                        continue
                    if msg.startswith("close:"):
                        _, code, reason = (msg.split(":", 2) + [""])[:3]
                        closed_by = "us"
                        await ws.close(int(code), reason)
                        break
                else:
                    self.event("msg", conn=conn, type="binary", len=len(msg),
                               head=msg[:HEAD_CHARS].decode("latin-1"))
                await self.echo(ws, conn, msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self.event("close", conn=conn, code=ws.close_code,
                       reason=ws.close_reason, by=closed_by)
            print("close %s conn=%d code=%s reason=%r" % (
                self.name, conn, ws.close_code, ws.close_reason), flush=True)

    async def half_message(self, ws, conn, text):
        async def fragments():
            yield text
            self.event("sent-fragment", conn=conn)
            await asyncio.Event().wait()    # the rest never comes
        try:
            await ws.send(fragments())
        except websockets.ConnectionClosed:
            pass

    async def run(self):
        LoggingProtocol.backend = self
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(
                sig, lambda: stop.done() or stop.set_result(None))
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1,
                                                      self.ack_all)
        async with websockets.serve(
                self.handler, self.host, self.port,
                subprotocols=self.subprotocols,
                max_size=None, compression=None, ping_interval=None,
                close_timeout=5, ssl=self.ssl,
                extra_headers=self.extra_headers,
                create_protocol=LoggingProtocol):
            self.event("ready", port=self.port,
                       subprotocols=self.subprotocols)
            print("ready %s %d" % (self.name, self.port), flush=True)
            await stop


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--subprotocols", default="",
                    help="comma separated, e.g. chat,superchat")
    ap.add_argument("--log", help="append JSON events to this file")
    ap.add_argument("--tls-cert", help="serve wss:// with this PEM chain")
    ap.add_argument("--tls-key", help="the key of --tls-cert")
    ap.add_argument("--state", help="keep session state in this directory")
    ap.add_argument("--no-received", action="store_true",
                    help="with --state: no X-WS-Persist-Received answer")
    ap.add_argument("--ack-every", type=int, default=1,
                    help="with --state: a wsp-ack pong every N messages "
                         "(0: on SIGUSR1 only)")
    args = ap.parse_args()
    try:
        asyncio.run(Backend(args).run())
    except OSError as e:
        print("error: %s" % e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
