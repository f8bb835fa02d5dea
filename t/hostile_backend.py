#!/usr/bin/python3
"""A broken or hostile WebSocket backend for mod_ws_persist's tests.

    /usr/bin/python3 t/hostile_backend.py --port N --mode MODE [--log FILE]
                                          [--flood-bytes N]

Raw asyncio sockets, so it can break the protocol in ways a WebSocket
library will not. Modes:

  handshake failures
    silent      accepts TCP, reads, never answers
    garbage     answers binary garbage and a blank line
    status      answers 500 Internal Server Error
    badaccept   answers 101 with a wrong Sec-WebSocket-Accept
  after a good 101, on the first client message
    masked      sends a masked frame (a server must not mask)
    oversized   sends the header of a 64 MB frame and some of it
    midframe    sends half a frame, then the process dies (os._exit)
  after a good 101, at once
    noread      never reads again (receive buffer shrunk: it fills fast);
                logs {"ev": "noread", "conn": N, "past_head": bytes
                read past the request head (0), "peer": port}: what the
                proxy writes stays in the socket
    flood       sends --flood-bytes of binary frames as fast as the proxy
                takes them; each frame's first 8 bytes are its number

Prints "ready MODE PORT" once listening. With --log, events go to FILE as
JSON lines, flushed at once: {"ev": "ready"}, {"ev": "conn", "conn": N},
{"ev": "request", "conn": N, "head": ...}, {"ev": "frame", "conn": N,
"len": L, "head": ...} (each frame the masked and oversized modes read,
the first and those they ignore), {"ev": "sent", "conn": N, "bytes": B, "frames": F} (flood,
about every MB and at the end), {"ev": "eof", "conn": N}.
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

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = ("silent", "garbage", "status", "badaccept", "masked", "oversized",
         "midframe", "noread", "flood")
FLOOD_FRAME = 64 * 1024


class Hostile:
    def __init__(self, args):
        self.mode = args.mode
        self.port = args.port
        self.flood_bytes = args.flood_bytes
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.conns = 0

    def event(self, ev, **fields):
        if self.log is None:
            return
        rec = {"ev": ev, "mode": self.mode, "pid": os.getpid()}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    @staticmethod
    def accept_for(key):
        return base64.b64encode(hashlib.sha1(key + GUID).digest())

    @staticmethod
    def key_of(head):
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                return value.strip()
        return b""

    def answer_101(self, head, good=True):
        accept = self.accept_for(self.key_of(head)) if good \
            else b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="
        return (b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    @staticmethod
    def frame(opcode, payload, mask=None, length=None):
        n = len(payload) if length is None else length
        b1 = 0x80 if mask else 0
        if n < 126:
            hdr = bytes([0x80 | opcode, b1 | n])
        elif n < 65536:
            hdr = bytes([0x80 | opcode, b1 | 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([0x80 | opcode, b1 | 127]) + struct.pack("!Q", n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            hdr += mask
        return hdr + payload

    async def read_frame(self, reader):
        """One frame from the proxy (masked); its payload, or None."""
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
        return bytes(b ^ key[i % 4] for i, b in enumerate(data))

    async def handle(self, reader, writer):
        self.conns += 1
        conn = self.conns
        self.event("conn", conn=conn)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            self.event("eof", conn=conn)
            return
        self.event("request", conn=conn,
                   head=head.decode("latin-1")[:2000])
        try:
            await getattr(self, "mode_" + self.mode)(reader, writer, head,
                                                     conn)
        except ConnectionError:
            pass
        self.event("eof", conn=conn)
        writer.close()

    async def hold(self, reader):
        """Keep the connection open, reading and ignoring, until EOF."""
        while await reader.read(65536):
            pass

    async def hold_frames(self, reader, conn):
        """After a 101: read the proxy's frames and ignore them, until
        EOF; each is logged ("frame"), so a test can tell a message this
        backend took (and never answered) from one the proxy lost."""
        while True:
            payload = await self.read_frame(reader)
            if payload is None:
                return
            self.event("frame", conn=conn, len=len(payload),
                       head=payload[:64].decode("latin-1"))

    async def mode_silent(self, reader, writer, head, conn):
        await self.hold(reader)

    async def mode_garbage(self, reader, writer, head, conn):
        writer.write(b"\x00\xff\xfe\x17garbage\x1b[2J\r\n\r\n")
        await writer.drain()
        await self.hold(reader)

    async def mode_status(self, reader, writer, head, conn):
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\n"
                     b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        await self.hold(reader)

    async def mode_badaccept(self, reader, writer, head, conn):
        writer.write(self.answer_101(head, good=False))
        await writer.drain()
        await self.hold(reader)

    async def after_first_message(self, reader, writer, head, conn):
        writer.write(self.answer_101(head))
        await writer.drain()
        payload = await self.read_frame(reader)
        if payload is not None:
            self.event("frame", conn=conn, len=len(payload),
                       head=payload[:64].decode("latin-1"))
        return payload is not None

    async def mode_masked(self, reader, writer, head, conn):
        if await self.after_first_message(reader, writer, head, conn):
            writer.write(self.frame(0x1, b"masked from a server",
                                    mask=b"\x01\x02\x03\x04"))
            await writer.drain()
        await self.hold_frames(reader, conn)

    async def mode_oversized(self, reader, writer, head, conn):
        if await self.after_first_message(reader, writer, head, conn):
            writer.write(self.frame(0x2, b"o" * 1000, length=64 << 20))
            await writer.drain()
        await self.hold_frames(reader, conn)

    async def mode_midframe(self, reader, writer, head, conn):
        if await self.after_first_message(reader, writer, head, conn):
            writer.write(self.frame(0x1, b"half of a message",
                                    length=1000))
            await writer.drain()
            self.event("dying", conn=conn)
            os._exit(0)

    async def mode_noread(self, reader, writer, head, conn):
        # nothing after the request head is taken from the socket (the
        # transport would read ahead into the process otherwise): what
        # the proxy writes stays there, for a test to read back
        writer.transport.pause_reading()
        self.event("noread", conn=conn, past_head=len(reader._buffer),
                   peer=writer.get_extra_info("peername")[1])
        writer.write(self.answer_101(head))
        await writer.drain()
        await asyncio.Event().wait()

    async def mode_flood(self, reader, writer, head, conn):
        writer.write(self.answer_101(head))
        await writer.drain()
        asyncio.ensure_future(self.hold(reader))
        sent = frames = 0
        body = b"f" * (FLOOD_FRAME - 8)
        while sent < self.flood_bytes:
            writer.write(self.frame(0x2, struct.pack("!Q", frames) + body))
            await writer.drain()
            sent += FLOOD_FRAME
            frames += 1
            if frames % 16 == 0:
                self.event("sent", conn=conn, bytes=sent, frames=frames)
        self.event("sent", conn=conn, bytes=sent, frames=frames, done=True)
        await asyncio.Event().wait()

    async def run(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.mode == "noread":
            # inherited by accepted sockets: a full window in a few KB
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", self.port))
        server = await asyncio.start_server(self.handle, sock=sock,
                                            limit=1 << 20)
        self.event("ready", port=self.port)
        print("ready %s %d" % (self.mode, self.port), flush=True)
        async with server:
            await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--log")
    ap.add_argument("--flood-bytes", type=int, default=64 << 20)
    args = ap.parse_args()
    try:
        asyncio.run(Hostile(args).run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
