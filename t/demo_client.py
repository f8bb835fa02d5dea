#!/usr/bin/python3
"""A demo client for mod_ws_persist: one WebSocket, numbered messages.

    /usr/bin/python3 t/demo_client.py [URL] [--interval 0.5] [--count N]

Sends "msg 1", "msg 2", ... every interval, each followed by "whoami" (a
command of t/backend.py), and prints every echo with the backend that sent
it, the time it took, and when the proxy moved the client to another
backend. URL defaults to ws://127.0.0.1:$WSP_DEMO_PORT/ws/<a fresh uuid>.

Type d and Enter to drop the client's own TCP connection (a reset, no
close frame): the client asks the backend for 5 counted messages (c1..c5,
one every 100 ms; t/backend.py's count command), drops its connection
after the second, stays away for a second, and reconnects with the same
id and X-WS-Persist-Received (the messages it has received). With
WSPersistResumeWindow the proxy kept the session, its backend and what
the backend sent meanwhile: the client prints what it was sent again. A
4410 close ("session gone") makes it start a fresh session.

Ctrl-C closes the WebSocket normally. Exits 0 after a normal close, 1 when
the proxy closed the connection or refused it.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
import uuid

import websockets

COUNTED = 5         # messages the backend sends around a drop (d key)

def hget(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


class Client:
    def __init__(self, args):
        self.args = args
        self.sent = {}           # n -> send time, until its echo arrives
        self.echo = None         # (n, rtt) waiting for its whoami
        self.backend = None      # (name, pid, conn) of the last whoami
        self.done = asyncio.Event()
        self.ws = None
        self.received = 0        # data messages of this session, for resume
        self.dropping = False    # the client dropped its connection itself
        self.counted = []        # the c1..c5 of the last drop
        self.after_resume = False

    def out(self, line):
        print(line, flush=True)

    def lost_before(self, n, why="it reached a backend that failed "
                                  "before answering"):
        """Messages sent before n that will never be echoed."""
        lost = sorted(k for k in self.sent if k < n)
        for k in lost:
            del self.sent[k]
        if lost:
            first, last = lost[0], lost[-1]
            self.out("msg %-5s no echo: %s" % (
                first if first == last else "%d-%d" % (first, last), why))

    def on_echo(self, text):
        n = int(text.split()[1])
        if self.echo:                    # its whoami got lost
            self.print_echo(None)
        if n not in self.sent:
            self.out("msg %-5d echoed again or out of order: unexpected"
                     % n)
            return
        self.lost_before(n)
        self.echo = (n, time.monotonic() - self.sent.pop(n))

    def on_whoami(self, info):
        me = (info["name"], info["pid"], info["conn"])
        if self.backend and me != self.backend:
            self.out("--- now on backend %s (pid %s), X-WS-Persist-Resume: "
                     "%s ---" % (info["name"], info["pid"],
                                 hget(info["headers"],
                                      "X-WS-Persist-Resume")))
        self.backend = me
        if self.echo:
            self.print_echo(info)

    def print_echo(self, info):
        n, rtt = self.echo
        self.echo = None
        who = ("%s (pid %s, resume %s)" % (
            info["name"], info["pid"],
            hget(info["headers"], "X-WS-Persist-Resume"))
            if info else "a backend whose whoami answer was lost")
        self.out("msg %-5d echoed by %s  %5.0f ms" % (n, who, rtt * 1000))

    async def send(self):
        n = 0
        while self.args.count == 0 or n < self.args.count:
            ws = self.ws
            if ws is None or self.dropping:
                await asyncio.sleep(0.05)     # between connections
                continue
            try:
                self.sent[n + 1] = time.monotonic()
                await ws.send("msg %d" % (n + 1))
                n += 1
                await ws.send("whoami")
            except websockets.ConnectionClosed:
                await asyncio.sleep(0.05)  # the run loop reconnects, or ends
                continue
            await asyncio.sleep(self.args.interval)
        # the last echoes may still be on their way
        deadline = time.monotonic() + 15
        while (self.sent or self.echo) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.done.set()

    async def receive(self, ws):
        try:
            async for msg in ws:
                self.received += 1       # every data message counts
                if isinstance(msg, bytes):
                    continue
                if msg.startswith("msg "):
                    self.on_echo(msg)
                elif msg[:1] == "c" and msg[1:].isdigit():
                    self.on_counted(msg)
                elif msg.startswith("{"):
                    self.on_whoami(json.loads(msg))
        except websockets.ConnectionClosed:
            pass

    def on_counted(self, msg):
        self.counted.append(msg)
        if self.after_resume:
            self.out("%-9s replayed after the resume: the backend sent it "
                     "while the client was away" % msg)
        else:
            self.out("%-9s received before the drop" % msg)
        if len(self.counted) == COUNTED:
            self.out("--- all of c1..c%d, each once: %s ---" % (
                COUNTED, "yes" if self.counted == [
                    "c%d" % i for i in range(1, COUNTED + 1)] else
                "NO, got %s" % self.counted))

    async def drop(self):
        """Have the backend send c1..c5, then reset the TCP connection
        under the WebSocket after c2 (no close frame, as when a phone
        changes networks) and stay away for a second."""
        ws = self.ws
        if ws is None or self.dropping:
            return
        self.dropping = True             # the sender pauses
        self.counted = []
        self.after_resume = False
        try:
            await ws.send("count:%d:100" % COUNTED)
        except websockets.ConnectionClosed:
            return
        deadline = time.monotonic() + 5
        while len(self.counted) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.out("--- dropping the connection (reset, no close frame) after "
                 "%d message(s) received; away for 1 s ---" % self.received)
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        ws.transport.abort()

    def on_stdin(self):
        line = sys.stdin.readline()
        if not line:                     # no terminal: no keys
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        elif line.strip().lower() == "d":
            asyncio.ensure_future(self.drop())

    async def connect(self, resume):
        """A connection for the client id; with resume, giving the count
        of messages received in the session."""
        headers = {}
        if resume:
            headers["X-WS-Persist-Received"] = str(self.received)
        else:
            self.received = 0
        ws = await websockets.connect(self.args.url, compression=None,
                                      max_size=None, open_timeout=30,
                                      extra_headers=headers)
        session = hget(ws.response_headers, "X-WS-Persist-Session")
        if resume:
            self.out("--- reconnected with X-WS-Persist-Received: %d; "
                     "X-WS-Persist-Session: %s ---" % (self.received,
                                                       session))
        return ws

    async def run(self):
        url = self.args.url
        self.out("connecting to %s" % url)
        loop = asyncio.get_running_loop()
        resume = False
        sender = None
        while True:
            try:
                ws = self.ws = await self.connect(resume)
            except websockets.InvalidStatusCode as e:
                self.out("the proxy refused the WebSocket: HTTP %d"
                         % e.status_code)
                return 1
            except (OSError, asyncio.TimeoutError) as e:
                self.out("cannot connect: %s" % e)
                return 1
            self.dropping = False
            if sender is None:
                self.out("connected; client id %s; type d and Enter to "
                         "drop the connection and resume"
                         % url.rstrip("/").split("/")[-1])
                loop.add_signal_handler(signal.SIGINT, self.done.set)
                try:
                    loop.add_reader(sys.stdin.fileno(), self.on_stdin)
                except (OSError, ValueError):
                    pass                 # stdin not pollable: no keys
                sender = asyncio.create_task(self.send())
            receiver = asyncio.create_task(self.receive(ws))
            finished = asyncio.create_task(self.done.wait())
            await asyncio.wait({receiver, finished},
                               return_when=asyncio.FIRST_COMPLETED)
            if not receiver.done():
                sender.cancel()
                await ws.close(1000, "bye")
                receiver.cancel()
                self.out("closed normally")
                return 0
            finished.cancel()
            if self.dropping:
                resume = True            # our own drop: resume the session
                await asyncio.sleep(1)
                self.after_resume = True
                continue
            if ws.close_code == 4410:
                self.out("the proxy says the session is gone (4410 %r): "
                         "starting a fresh session" % ws.close_reason)
                self.lost_before(sys.maxsize, "the session ended first")
                resume = False
                continue
            break
        sender.cancel()
        if self.echo:
            self.print_echo(None)
        self.lost_before(sys.maxsize, "the connection closed first")
        self.out("the proxy closed the WebSocket: code %s, reason %r"
                 % (ws.close_code, ws.close_reason))
        return 0 if ws.close_code == 1000 else 1


def main():
    port = os.environ.get("WSP_DEMO_PORT", "8080")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url", nargs="?",
                    default="ws://127.0.0.1:%s/ws/%s" % (port, uuid.uuid4()))
    ap.add_argument("--interval", type=float, default=0.5,
                    help="seconds between messages (0.5)")
    ap.add_argument("--count", type=int, default=0,
                    help="stop after this many messages (0: never)")
    args = ap.parse_args()
    try:
        return asyncio.run(Client(args).run())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
