"""A client that aborts its connection at any moment of the upgrade: the
connection is owned by exactly one party (the MPM or the module), the
child never crashes, and the pipe is ended and counted out."""

import asyncio
import base64
import hashlib
import socket
import struct
import threading
import time

from wsp_env import (HOST, connect, echo, new_id, send_request,
                     upgrade_headers, wait_until)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class SlowBackend:
    """A backend that answers the upgrade after `delay` seconds, then
    reads and discards whatever comes. Counts connections and EOFs."""

    def __init__(self, delay):
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.opened = 0
        self.ended = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "ws://%s:%d/slow/" % (HOST, self.port)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        with self.lock:
            self.opened += 1
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = c.recv(4096)
                if not chunk:
                    return
                buf += chunk
            key = ""
            for line in buf.decode("latin-1").split("\r\n"):
                if line.lower().startswith("sec-websocket-key:"):
                    key = line.split(":", 1)[1].strip()
            time.sleep(self.delay)
            acc = base64.b64encode(hashlib.sha1(
                (key + GUID).encode()).digest()).decode()
            c.sendall(("HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: %s\r\n\r\n" % acc).encode())
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            with self.lock:
                self.ended += 1
            c.close()


def reset_during_handshake(port, path):
    """Send the upgrade, then reset the connection before any answer."""
    s = socket.create_connection((HOST, port), timeout=10)
    send_request(s, "GET", path, upgrade_headers())
    time.sleep(0.05)            # the proxy is now handshaking upstream
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                 struct.pack("ii", 1, 0))
    s.close()                   # RST


def test_reset_while_backend_handshakes(env):
    """Clients reset their connection while the proxy still waits for a
    slow backend's 101 (a CustomLog is configured, as in the base conf).
    No child crashes, every backend connection is closed again, and the
    client id is free for a new session; other clients are served."""
    slow = SlowBackend(0.2)
    good = env.backend("good")
    env.start_httpd(env.location("/ws/", [slow.url])
                    + env.location("/ok/", [good]))
    ids = [new_id() for _ in range(50)]
    threads = [threading.Thread(target=reset_during_handshake,
                                args=(env.httpd.port, "/ws/" + i))
               for i in ids]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()

    async def check():
        async with connect(env, location="/ok/") as ws:
            await echo(ws, "served after the resets")
    # the pipes of the aborted clients end and close their backends
    wait_until(lambda: slow.ended >= slow.opened and slow.opened >= 50,
               timeout=30, what="the aborted pipes' backend connections "
               "to close (%d opened, %d closed)" % (slow.opened, slow.ended))
    asyncio.run(check())
    # an aborted client's id is not left claimed by an orphaned pipe
    s = socket.create_connection((HOST, env.httpd.port), timeout=10)
    send_request(s, "GET", "/ws/" + ids[0], upgrade_headers())
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    assert not env.httpd.log_lines(r"exit signal"), "a child crashed"
