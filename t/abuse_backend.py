#!/usr/bin/python3
"""Abusive WebSocket backends for mod_ws_persist's abuse suite
(t/integration/test_abuse.py).

    /usr/bin/python3 t/abuse_backend.py --port N --mode MODE [--log FILE]
                                        [--name NAME] [--delay-ms MS]
                                        [--quiet]

Raw asyncio sockets, so it can do what a WebSocket library will not. Every
mode answers a good 101 (slow101 only late). Modes:

  echo         echoes every data frame as it came (same opcode and FIN,
               unmasked), answers pings and a close; text commands (one
               frame each, not echoed):
                 whoami    answers {"name": NAME, "conn": N} as text
                 badclose  answers a close frame, code 1000, whose reason
                           is invalid UTF-8 (b"\\xff\\xfe bad \\xc3\\x28"),
                           then keeps the connection open and reads on
  slow101      echo, but the 101 comes --delay-ms (200) after the request
  closesilent  echo, but a close frame is read and never answered: the
               TCP connection stays open and is read on until EOF
  pingflood    sends 125-byte pings as fast as the proxy takes them and
               never reads (receive buffer shrunk: it fills fast)
  tinyflood    sends 1-byte binary messages as fast as the proxy takes
               them; reads what comes and logs only its control frames
  fragflood    sends the first (1-byte, FIN=0) frame of a binary message,
               then empty continuation frames, as fast as the proxy takes
               them, forever; reads what comes and logs only its control
               frames

Prints "ready MODE PORT" once listening. With --log, events go to FILE as
JSON lines, flushed at once:
  {"ev": "ready"}, {"ev": "conn", "conn": N},
  {"ev": "request", "conn": N, "head": ...},
  {"ev": "msg", "conn": N, "op": O, "len": L, "head": ...}   (whole message)
  {"ev": "control", "conn": N, "op": O, "payload": HEX}      (ping/pong/close)
  {"ev": "close-ignored", "conn": N, "payload": HEX}         (closesilent)
  {"ev": "sent", "conn": N, "bytes": B, "frames": F, "t": T} (floods, about
                                                     every 0.2 s; T is
                                                     time.monotonic())
  {"ev": "eof", "conn": N}
--quiet logs only ready, conn and eof (for runs of many
thousand sessions).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = ("echo", "slow101", "closesilent", "pingflood", "tinyflood",
         "fragflood")
BAD_REASON = b"\xff\xfe bad \xc3\x28"
FLOOD_CHUNK = 64 * 1024          # bytes of frames per write
SENT_EVERY = 0.2                 # seconds between "sent" events


def frame(opcode, payload=b"", fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        hdr = bytes([b0, n])
    elif n < 65536:
        hdr = bytes([b0, 126]) + struct.pack("!H", n)
    else:
        hdr = bytes([b0, 127]) + struct.pack("!Q", n)
    return hdr + payload


def unmask(data, key):
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big")
            ^ int.from_bytes(k, "big")).to_bytes(n, "big")


class Abuse:
    def __init__(self, args):
        self.mode = args.mode
        self.port = args.port
        self.name = args.name or "abuse-%d" % args.port
        self.delay = args.delay_ms / 1000.0
        self.quiet = args.quiet
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.conns = 0

    def event(self, ev, **fields):
        if self.log is None:
            return
        if self.quiet and ev not in ("ready", "conn", "eof"):
            return
        rec = {"ev": ev, "mode": self.mode, "name": self.name,
               "pid": os.getpid()}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    @staticmethod
    def answer_101(head):
        key = b""
        for line in head.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"sec-websocket-key":
                key = v.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    @staticmethod
    async def read_frame(reader):
        """(fin, opcode, payload) from the proxy, or None at EOF."""
        try:
            h = await reader.readexactly(2)
            n = h[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            key = await reader.readexactly(4) if h[1] & 0x80 else b"\0" * 4
            data = await reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if n and key != b"\0\0\0\0":
            data = unmask(data, key)
        return bool(h[0] & 0x80), h[0] & 0x0F, data

    async def handle(self, reader, writer):
        self.conns += 1
        conn = self.conns
        self.event("conn", conn=conn)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            self.event("eof", conn=conn)
            writer.close()
            return
        self.event("request", conn=conn, head=head.decode("latin-1")[:2000])
        try:
            if self.mode == "slow101":
                await asyncio.sleep(self.delay)
            writer.write(self.answer_101(head))
            await writer.drain()
            if self.mode in ("echo", "slow101", "closesilent"):
                await self.echo(reader, writer, conn)
            else:
                await getattr(self, "mode_" + self.mode)(reader, writer,
                                                         conn)
        except (ConnectionError, OSError):
            pass
        self.event("eof", conn=conn)
        try:
            writer.close()
        except OSError:
            pass

    async def echo(self, reader, writer, conn):
        msg_op, parts = None, []
        close_sent = False
        while True:
            f = await self.read_frame(reader)
            if f is None:
                return
            fin, op, payload = f
            if op >= 0x8:
                self.event("control", conn=conn, op=op, payload=payload.hex())
                if op == 0x9:
                    writer.write(frame(0xA, payload))
                elif op == 0x8:
                    if self.mode == "closesilent":
                        self.event("close-ignored", conn=conn,
                                   payload=payload.hex())
                        continue            # and read on, never answering
                    if not close_sent:
                        writer.write(frame(0x8, payload[:2]))
                    await writer.drain()
                    return
                await writer.drain()
                continue
            if close_sent:
                continue                    # after our close: ignored
            command = op == 0x1 and fin and payload in (b"whoami",
                                                        b"badclose")
            if not command:
                writer.write(frame(op, payload, fin))
            if op != 0:
                msg_op, parts = op, []
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                self.event("msg", conn=conn, op=msg_op, len=len(data),
                           head=data[:256].decode("latin-1"))
            if command and payload == b"whoami":
                writer.write(frame(0x1, json.dumps(
                    {"name": self.name, "conn": conn}).encode()))
            elif command:
                writer.write(frame(0x8, struct.pack("!H", 1000)
                                   + BAD_REASON))
                close_sent = True
                self.event("sent-badclose", conn=conn)
            await writer.drain()

    async def discard(self, reader, conn):
        """Read what the proxy sends, log its control frames (a close
        says with which code it gave up on us), ignore the rest."""
        while True:
            f = await self.read_frame(reader)
            if f is None:
                return
            if f[1] >= 0x8:
                self.event("control", conn=conn, op=f[1],
                           payload=f[2].hex())

    async def flood(self, writer, conn, chunk, frames_per_chunk):
        sent = frames = 0
        last = 0.0
        while True:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            frames += frames_per_chunk
            now = time.monotonic()
            if now - last >= SENT_EVERY:
                last = now
                self.event("sent", conn=conn, bytes=sent, frames=frames,
                           t=now)

    async def mode_pingflood(self, reader, writer, conn):
        one = frame(0x9, b"p" * 125)
        n = FLOOD_CHUNK // len(one)
        await self.flood(writer, conn, one * n, n)

    async def mode_tinyflood(self, reader, writer, conn):
        asyncio.ensure_future(self.discard(reader, conn))
        one = frame(0x2, b"t")
        n = FLOOD_CHUNK // len(one)
        await self.flood(writer, conn, one * n, n)

    async def mode_fragflood(self, reader, writer, conn):
        asyncio.ensure_future(self.discard(reader, conn))
        writer.write(frame(0x2, b"f", fin=False))
        one = frame(0x0, b"", fin=False)
        n = FLOOD_CHUNK // len(one)
        await self.flood(writer, conn, one * n, n)

    async def run(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.mode == "pingflood":
            # inherited by accepted sockets: the pongs fill it fast
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if self.mode in ("tinyflood", "fragflood"):
            # little in flight: once the test kills us (its safety valve),
            # the proxy has not much left of the flood to parse (a
            # pingflood keeps the default: the proxy reads it at full
            # speed, as a real backend's would be)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(1024)
        server = await asyncio.start_server(self.handle, sock=sock,
                                            limit=1 << 20, backlog=1024)
        self.event("ready", port=self.port)
        print("ready %s %d" % (self.mode, self.port), flush=True)
        async with server:
            await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--name")
    ap.add_argument("--log")
    ap.add_argument("--delay-ms", type=int, default=200)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    try:
        asyncio.run(Abuse(args).run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
