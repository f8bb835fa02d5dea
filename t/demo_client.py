#!/usr/bin/python3
"""A demo client for mod_ws_persist: one WebSocket, numbered messages.

    /usr/bin/python3 t/demo_client.py [URL] [--interval 0.5] [--count N]

Sends "msg 1", "msg 2", ... every interval, each followed by "whoami" (a
command of t/backend.py), and prints every echo with the backend that sent
it, the time it took, and when the proxy moved the client to another
backend. URL defaults to ws://127.0.0.1:$WSP_DEMO_PORT/ws/<a fresh uuid>.
Ctrl-C closes the WebSocket normally. Exits 0 after a normal close, 1 when
the proxy closed the connection or refused it.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid

import websockets


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

    async def send(self, ws):
        n = 0
        try:
            while self.args.count == 0 or n < self.args.count:
                n += 1
                self.sent[n] = time.monotonic()
                await ws.send("msg %d" % n)
                await ws.send("whoami")
                await asyncio.sleep(self.args.interval)
        except websockets.ConnectionClosed:
            return                       # receive() reports it
        # the last echoes may still be on their way
        deadline = time.monotonic() + 15
        while (self.sent or self.echo) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.done.set()

    async def receive(self, ws):
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    continue
                if msg.startswith("msg "):
                    self.on_echo(msg)
                elif msg.startswith("{"):
                    self.on_whoami(json.loads(msg))
        except websockets.ConnectionClosed:
            pass

    async def run(self):
        url = self.args.url
        self.out("connecting to %s" % url)
        try:
            ws = await websockets.connect(url, compression=None,
                                          max_size=None, open_timeout=30)
        except websockets.InvalidStatusCode as e:
            self.out("the proxy refused the WebSocket: HTTP %d"
                     % e.status_code)
            return 1
        except (OSError, asyncio.TimeoutError) as e:
            self.out("cannot connect: %s" % e)
            return 1
        self.out("connected; client id %s" % url.rstrip("/").split("/")[-1])
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT,
                                                      self.done.set)
        sender = asyncio.create_task(self.send(ws))
        receiver = asyncio.create_task(self.receive(ws))
        finished = asyncio.create_task(self.done.wait())
        await asyncio.wait({receiver, finished},
                           return_when=asyncio.FIRST_COMPLETED)
        sender.cancel()
        if not receiver.done():
            await ws.close(1000, "bye")
            receiver.cancel()
            self.out("closed normally")
            return 0
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
