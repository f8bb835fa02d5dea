#!/usr/bin/python3
"""The echo backend of the chaos soak (t/soak.py).

    /usr/bin/python3 t/soak_backend.py --port N --name NAME --log FILE

An asyncio Protocol on raw sockets, not python3-websockets: it logs a
message in the same callback that read its bytes, so a backend killed at
any moment has logged (nearly) everything it took from its sockets. That
is what lets the soak tell a message the proxy completely wrote to a
backend that died (allowed to be lost) from one the proxy lost.

Log lines (JSON, flushed at once), a subset of t/backend.py's:
    {"ev": "ready", "pid": P, ...}
    {"ev": "open", "conn": N, "headers": {...}, "pid": P}
    {"ev": "msg", "conn": N, "head": up to 64 characters, "whole": bool,
     "pid": P}   logged when the first 16 payload bytes (enough to name
                 the message) are in, again ("whole": true) once the
                 whole frame is
Echoes every text or binary frame (unfragmented only: the soak sends no
fragments), answers pings, answers a close.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD = 64
START = 16      # payload bytes that name a message: "c<k>:<seq>:"


def unmask(data, key):
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")) \
        .to_bytes(n, "big")


def frame(opcode, payload):
    n = len(payload)
    if n < 126:
        hdr = bytes([0x80 | opcode, n])
    elif n < 65536:
        hdr = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
    else:
        hdr = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
    return hdr + payload


class Conn(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.server.conns += 1
        self.conn = server.conns
        self.buf = b""
        self.open = False
        self.started = None            # the frame whose head was logged

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), \
                self.buf[end + 4:]
            headers = {}
            key = ""
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                headers[k.strip()] = v.strip()
                if k.strip().lower() == "sec-websocket-key":
                    key = v.strip()
            accept = base64.b64encode(hashlib.sha1(
                key.encode() + GUID).digest())
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\n"
                         b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.open = True
            self.server.event("open", conn=self.conn, headers=headers)
        while self.frame():
            pass

    def frame(self):
        """Handle one frame from self.buf if its header is in; log the
        head of a data frame as soon as it is in. Returns whether a whole
        frame was used."""
        b = self.buf
        if len(b) < 2:
            return False
        n = b[1] & 0x7F
        off = 2
        if n == 126:
            if len(b) < 4:
                return False
            n = struct.unpack("!H", b[2:4])[0]
            off = 4
        elif n == 127:
            if len(b) < 10:
                return False
            n = struct.unpack("!Q", b[2:10])[0]
            off = 10
        if len(b) < off + 4:
            return False
        key = b[off:off + 4]
        off += 4
        op = b[0] & 0x0F
        if op in (1, 2) and self.started is None \
                and len(b) >= off + min(n, START):
            head = unmask(b[off:min(off + n, len(b), off + HEAD)], key)
            self.started = head
            self.server.event("msg", conn=self.conn,
                              head=head.decode("latin-1"), whole=False)
        if len(b) < off + n:
            return False
        payload = unmask(b[off:off + n], key)
        self.buf = b[off + n:]
        if op in (1, 2):
            self.server.event("msg", conn=self.conn,
                              head=payload[:HEAD].decode("latin-1"),
                              whole=True)
            self.started = None
            self.t.write(frame(op, payload))
        elif op == 9:
            self.t.write(frame(10, payload))
        elif op == 8:
            self.t.write(frame(8, payload[:2]))
            self.t.close()
        return True


class Server:
    def __init__(self, args):
        self.name = args.name
        self.port = args.port
        self.log = open(args.log, "a", encoding="utf-8")
        self.conns = 0

    def event(self, ev, **fields):
        rec = {"ev": ev, "name": self.name, "pid": os.getpid()}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    async def run(self):
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Conn(self), "127.0.0.1",
                                          self.port, reuse_address=True)
        self.event("ready", port=self.port)
        print("ready %s %d" % (self.name, self.port), flush=True)
        async with server:
            await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    try:
        asyncio.run(Server(args).run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
