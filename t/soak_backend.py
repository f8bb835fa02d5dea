#!/usr/bin/python3
"""The echo backend of the chaos soak (t/soak.py).

    /usr/bin/python3 t/soak_backend.py --port N --name NAME --log FILE
        [--inc N] [--state DIR]

One thread, one epoll loop (selectors) over non-blocking raw sockets, not
python3-websockets nor asyncio's transports: every byte it takes from a
socket and every byte the kernel accepts from it is accounted for in the
same callback, and logged before the loop waits again. The soak freezes
it (SIGSTOP) only while it waits in epoll_wait (t/soak.py freeze_idle),
so at a kill its log says exactly what it had read, what it had echoed
into the kernel, and what it still held in its own buffers. That is what
lets the soak tell a message the proxy completely wrote to a backend that
died (allowed to be lost, DESIGN §3) from one the proxy lost.

Log lines (JSON, flushed at once); every one has "ev", "name", "inc"
(the --inc of this process: which start of this backend it is, as pids
are reused within a soak), "pid" and "t" (time.time() when it was
logged):
    {"ev": "ready", "port": N}
    {"ev": "open", "conn": N, "peer": proxy-side port, "headers": {...}}
    {"ev": "msg", "conn": N, "head": first 64 characters, "whole": true,
     "end": E, "kout": K}
        a data message arrived whole (its last fragment did); its echo,
        one frame, was queued and ends at byte
        E of this connection's output stream (the 101 included); K bytes
        of that stream had been accepted by the kernel when the callback
        logged it: the echo is in the kernel iff K >= E
    {"ev": "out", "conn": N, "kout": K}
        the kernel accepted more output (logged at the end of any callback
        where it changed and no "msg" line said so)
    {"ev": "partial", "conn": N, "have": B, "hex": H, "msg": M}
        at the end of a callback, when it changed: B bytes read but not
        yet used (the start of one frame whose rest has not arrived; 0
        once none are left), the first 64 of them in hex (its header and
        the head of its payload), and M the head of the message whose
        first fragments it has (null when none). The last one before a
        kill is what the process held.
    {"ev": "close", "conn": N, "code": C}   a close frame, answered
    {"ev": "end", "conn": N, "how": "eof" | "reset" | "closed"}
Echoes every text or binary message in one frame once it is whole (the
proxy may fragment a message differently than the client sent it),
answers pings, answers a close then closes once its output is out.

With --state DIR it keeps session state as an application would
(WSPersistAck On, DESIGN 7): processing a message is appending the line
"SEQ HEAD NAME INC" to DIR/<client id> in one write (O_APPEND: a SIGKILL
cannot cut it), so the file is both the state and the record the soak
checks. K, the last SEQ in the file, is answered in the 101 as
X-WS-Persist-Received; the connection's messages are numbered from K+1.
A message numbered K or below (the file says it was processed) is not
processed again nor echoed:
    {"ev": "repeat", "conn": N, "seq": S, "head": ...}
Each processed message is echoed, then acknowledged with a pong
"wsp-ack:SEQ"; its "msg" line carries "seq".
"""

import argparse
import base64
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD = 64
RCVBUF = 64 << 10


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


class Conn:
    def __init__(self, server, sock):
        self.server = server
        server.conns += 1
        self.conn = server.conns
        self.sock = sock
        self.peer = sock.getpeername()[1]
        self.buf = b""
        self.out = bytearray()
        self.qend = 0                  # output bytes queued, ever
        self.kout = 0                  # output bytes the kernel took
        self.kout_logged = 0
        self.partial_logged = (0, b"", None)
        self.msg_op = None
        self.parts = None              # the fragments of a message so far
        self.open = False
        self.closing = False           # close once the output is out
        self.gone = False
        self.cid = None                # --state: the session's file
        self.seq = 0                   # the number of the next message

    def event(self, ev, **fields):
        self.server.event(ev, conn=self.conn, **fields)

    # output ------------------------------------------------------------

    def send(self, data):
        self.out += data
        self.qend += len(data)
        self.flush()

    def flush(self):
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                break
            except OSError:
                self.end("reset")
                return
            self.kout += n
            del self.out[:n]
        if self.gone:
            return
        if not self.out and self.closing:
            self.end("closed")
            return
        self.server.want_write(self, bool(self.out))

    # input -------------------------------------------------------------

    def readable(self):
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            self.end("reset")
            return
        if not data:
            self.end("eof")
            return
        if self.closing:
            return                     # after its close: ignored
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                self.after_callback()
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
            self.open = True
            self.event("open", peer=self.peer, headers=headers)
            extra = b""
            if self.server.state:
                self.cid = headers.get("X-WS-Persist-Client-Id")
                k = self.server.processed(self.cid)
                self.seq = k + 1
                extra = b"X-WS-Persist-Received: %d\r\n" % k
            self.send(b"HTTP/1.1 101 Switching Protocols\r\n"
                      b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + accept + b"\r\n"
                      + extra + b"\r\n")
        while not self.gone and not self.closing and self.frame():
            pass
        self.after_callback()

    def frame(self):
        """Handle one whole frame from self.buf, if one is in. Returns
        whether one was."""
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
        if len(b) < off + 4 + n:
            return False
        key = b[off:off + 4]
        off += 4
        fin = b[0] & 0x80
        op = b[0] & 0x0F
        payload = unmask(b[off:off + n], key)
        self.buf = b[off + n:]
        if op in (0, 1, 2):
            # the proxy frames messages its own way: a large one comes
            # in fragments, and is whole with its last one
            if op:
                self.msg_op, self.parts = op, [payload]
            else:
                self.parts.append(payload)
            if fin:
                payload = b"".join(self.parts)
                self.parts = None
                head = payload[:HEAD].decode("latin-1")
                seq = None
                if self.cid:
                    seq, self.seq = self.seq, self.seq + 1
                    if seq <= self.server.processed(self.cid):
                        self.event("repeat", seq=seq, head=head)
                        return True
                    self.server.record(self.cid, seq, head)
                self.send(frame(self.msg_op, payload))
                self.event("msg", head=head, whole=True, end=self.qend,
                           kout=self.kout, seq=seq)
                self.kout_logged = self.kout
                if seq is not None:
                    self.send(frame(10, b"wsp-ack:%d" % seq))
        elif op == 9:
            self.send(frame(10, payload))
        elif op == 8:
            code = struct.unpack("!H", payload[:2])[0] \
                if len(payload) >= 2 else None
            self.event("close", code=code)
            self.closing = True
            self.send(frame(8, payload[:2]))
        return True

    def after_callback(self):
        """What the log must say before the loop waits again."""
        if self.gone:
            return
        if self.kout != self.kout_logged:
            self.event("out", kout=self.kout)
            self.kout_logged = self.kout
        state = (len(self.buf), self.buf[:HEAD],
                 self.parts[0][:HEAD] if self.parts else None)
        if state != self.partial_logged:
            self.event("partial", have=state[0], hex=state[1].hex(),
                       msg=None if state[2] is None
                       else state[2].decode("latin-1"))
            self.partial_logged = state

    def writable(self):
        self.flush()
        self.after_callback()

    def end(self, how):
        if self.gone:
            return
        self.gone = True
        self.event("end", how=how)
        self.server.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass


class Server:
    def __init__(self, args):
        self.name = args.name
        self.inc = args.inc
        self.port = args.port
        self.log = open(args.log, "a", encoding="utf-8")
        self.conns = 0
        self.state = args.state
        self.sel = selectors.EpollSelector()

    def _path(self, cid):
        return os.path.join(self.state, cid)

    def processed(self, cid):
        """K: the last message number the session's file records."""
        try:
            with open(self._path(cid), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 512))
                lines = f.read().splitlines()
        except FileNotFoundError:
            return 0
        return int(lines[-1].split(b" ", 1)[0]) if lines else 0

    def record(self, cid, seq, head):
        msg = head.split(":", 2)
        line = "%d %s %s %d\n" % (seq, ":".join(msg[:2]), self.name,
                                   self.inc)
        fd = os.open(self._path(cid), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def event(self, ev, **fields):
        rec = {"ev": ev, "name": self.name, "inc": self.inc,
               "pid": os.getpid(), "t": round(time.time(), 6)}
        rec.update(fields)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def want_write(self, c, on):
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        if self.sel.get_key(c.sock).events != mask:
            self.sel.modify(c.sock, mask, c)

    def forget(self, c):
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass

    def run(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # small receive buffers (the connections inherit them): a large
        # message fills one, so kills find messages half written, which
        # the proxy must send again whole
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(512)
        ls.setblocking(False)
        self.sel.register(ls, selectors.EVENT_READ, None)
        self.event("ready", port=self.port)
        print("ready %s %d" % (self.name, self.port), flush=True)
        while True:
            for key, mask in self.sel.select():
                if key.data is None:
                    while True:
                        try:
                            s, _ = ls.accept()
                        except BlockingIOError:
                            break
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                                     1)
                        c = Conn(self, s)
                        self.sel.register(s, selectors.EVENT_READ, c)
                    continue
                c = key.data
                if mask & selectors.EVENT_WRITE and not c.gone:
                    c.writable()
                if mask & selectors.EVENT_READ and not c.gone:
                    c.readable()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--inc", type=int, default=0,
                    help="which start of this backend this process is "
                    "(pids are reused within a soak)")
    ap.add_argument("--state", help="keep session state in this directory "
                    "(WSPersistAck On)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        Server(args).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
