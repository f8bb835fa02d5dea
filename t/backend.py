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

With --tls-cert and --tls-key it speaks wss:// (TLS with that certificate
chain and key). Prints "ready <name> <port>" on stdout once listening.
With --log, every event is appended to FILE as one JSON object per line,
flushed at once, so a test can prove what the backend saw:

    {"ev": "ready", ...}
    {"ev": "open",  "conn": N, "path": ..., "headers": {...}, ...}
    {"ev": "msg",   "conn": N, "type": "text"|"binary", "len": L,
                    "head": first 256 characters (binary: latin-1)}
    {"ev": "close", "conn": N, "code": C, "reason": R, "by": "peer"|"us"}

Uses the legacy asyncio API of python3-websockets 10.x (Debian 12).
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

import websockets

HEAD_CHARS = 256


class Backend:
    def __init__(self, args):
        self.name = args.name or "backend-%d" % args.port
        self.port = args.port
        self.host = args.host
        self.subprotocols = [p.strip() for p in args.subprotocols.split(",")
                             if p.strip()] if args.subprotocols else None
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.conns = 0
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

    async def handler(self, ws, path):
        self.conns += 1
        conn = self.conns
        headers = self.headers_of(ws)
        self.event("open", conn=conn, path=path, headers=headers,
                   subprotocol=ws.subprotocol)
        print("open %s conn=%d path=%s client-id=%s resume=%s" % (
            self.name, conn, path, headers.get("X-WS-Persist-Client-Id"),
            headers.get("X-WS-Persist-Resume")), flush=True)
        closed_by = "peer"
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    self.event("msg", conn=conn, type="text", len=len(msg),
                               head=msg[:HEAD_CHARS])
                    if msg == "whoami":
                        await ws.send(json.dumps({
                            "name": self.name, "path": path,
                            "headers": headers, "subprotocol": ws.subprotocol,
                            "pid": os.getpid(), "conn": conn}))
                        continue
                    if msg.startswith("frag:"):
                        _, n, text = msg.split(":", 2)
                        n = int(n)
                        step = max(1, -(-len(text) // n))
                        await ws.send([text[i:i + step]
                                       for i in range(0, len(text), step)])
                        continue
                    if msg.startswith("halfmsg:"):
                        asyncio.ensure_future(self.half_message(
                            ws, conn, msg.split(":", 1)[1]))
                        continue
                    if msg.startswith("big:"):
                        await ws.send("b" * int(msg.split(":", 1)[1]))
                        continue
                    if msg.startswith("close:"):
                        _, code, reason = (msg.split(":", 2) + [""])[:3]
                        closed_by = "us"
                        await ws.close(int(code), reason)
                        break
                else:
                    self.event("msg", conn=conn, type="binary", len=len(msg),
                               head=msg[:HEAD_CHARS].decode("latin-1"))
                await ws.send(msg)
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
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(
                sig, lambda: stop.done() or stop.set_result(None))
        async with websockets.serve(
                self.handler, self.host, self.port,
                subprotocols=self.subprotocols,
                max_size=None, compression=None, ping_interval=None,
                close_timeout=5, ssl=self.ssl):
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
    args = ap.parse_args()
    try:
        asyncio.run(Backend(args).run())
    except OSError as e:
        print("error: %s" % e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
