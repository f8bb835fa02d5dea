#!/usr/bin/python3
"""Chaos soak for mod_ws_persist: make -f Makefile.apxs soak

    /usr/bin/python3 t/soak.py [--duration 120] [--clients 50]
        [--backends 3] [--rate 20] [--kill-every 0.3] [--driver event]
        [--children 2] [--drain-every 2] [--big-every 50] [--hang 0.03]
        [--ack | --resume]

Starts the real apache2 with the built module in front of --backends echo
backends (t/soak_backend.py, each logging what it reads and echoes),
connects --clients clients that each stream numbered messages
("c<k>:<n>:...", up to 2 KB; one in --big-every of 64-512 KB, sent in
32 KB fragments 2-10 ms apart) at --rate messages a second, and for
--duration seconds SIGKILLs a random backend every --kill-every seconds
(never the last one up) and restarts it after 0.2-1 s. Meanwhile,
through the ws-persist-manager, it drains the backend with the most pipes
every --drain-every seconds and enables it again half that later, so
pipes move between backends while others fail over; httpd runs
--children children sharing the backend state. Then it stops sending,
lets the echoes drain, closes the clients, stops httpd and accounts for
every message: each echo must be the message sent, and each missing one
needs evidence.

A missing message (sent, never echoed to its client) is allowed only with
evidence, for one backend connection X of that client, that DESIGN §3
allows its loss at that moment: it was completely written to X before X
ended, and X's echo of it never left X (or left it, and the end of X
threw it away before the proxy's kernel had it). Everything else fails
the run. No time window excuses anything.

How X ends: each kill stops the backend between two callbacks (SIGSTOP
while it waits in epoll_wait: then its log says everything it read,
echoed and still held), lets it hang up to --hang s (the proxy's
writes pile up in its sockets, whose receive buffers are small), takes
copies of its connections' sockets (pidfd_getfd, as root), SIGKILLs it
and reads from the copies what the dead process never read. Then each
copy ends as the kernel ends a dead process's socket: with a reset if
data was unread (first the copy is read until nothing more comes, so
that what the proxy's kernel still held for it counts as written, and
the soak notes how much of the backend's output the proxy's kernel had
not acknowledged, SIOCOUTQ: the reset throws that away), else with a
FIN. After a FIN the copy keeps reading until the proxy closes its end,
recording what the proxy still wrote; a proxy that keeps a connection
15 s after its FIN fails the run.

The buckets of missing messages:

  in flight at kill   X logged it whole (t/soak_backend.py logs a message
                      once its last fragment is in, never a part) and the
                      process was killed while X was open, before the
                      kernel had taken its echo: allowed.
  unread at kill      X's copy held all of it, or the rest of what the
                      backend had read of it (in its log, "partial"): the
                      whole message was in X's socket at the kill:
                      allowed.
                      Both need the proxy's line for X's end ("backend
                      interrupted", "draining backend ... let go") after
                      X's reset or FIN: the proxy wrote the message
                      before it learned that X had ended.
  written after FIN   the whole message came on X's copy after the FIN
                      and before the proxy closed X, and the proxy's own
                      line for X's end says it learned it from that FIN
                      ("backend interrupted (connection closed)", logged
                      after the FIN): allowed. Any other proxy account of
                      X's end (none, a later reset or ping, a write
                      error) excuses nothing. (The soak's read time of
                      a frame is no bound on when it arrived, so frames
                      are not timed against the proxy's line; a proxy
                      that never acts on the FIN holds X and fails.)
  echo cut by reset   X echoed it into the kernel, X was ended with a
                      reset, and the echo's last byte lies in the part of
                      X's output the proxy's kernel had not acknowledged
                      when the reset went out (the reset discards it: a
                      backend message not completely received when its
                      backend failed is dropped, §3), and the proxy's
                      line for X's end comes after the reset and is not
                      an EOF: allowed. An echo the proxy's kernel had
                      acknowledged was received: Linux still returns
                      queued data before ECONNRESET, and the proxy reads
                      a socket that polls HUP/ERR, so losing it is the
                      proxy's doing.
  echo lost           X echoed it into the kernel and nothing above
                      excuses it (X not killed, ended with a FIN, or the
                      echo acknowledged before the reset): FAILS.
  unexplained         no backend connection had it whole (never written,
                      or only part of it and never replayed whole), or
                      one had it and neither echoed it nor was killed:
                      FAILS.

Also failing: an echo unlike the message sent, duplicates or
reordering seen by a client or by the
backends (a message that two connections received whole, §3's "never
twice"), a message on another client's connection, a child crash or
replacement, an error-level line in the error log, a problem stopping
httpd, a client connection that ended before the soak closed it (also
after the clients stopped sending), a close not answered with 1000, a
kill whose backend could not be frozen between callbacks, a proxy that
holds a backend connection after its FIN, a killed connection whose end
the proxy never logged, and a run without kills, failovers or moves.
Only loopback is used. Figures go to build/soak.json.

With --ack the location has WSPersistAck On and the backends keep session
state in a shared directory (t/soak_backend.py --state), answer
X-WS-Persist-Received and acknowledge every message: then the backends'
session files must show every message sent processed exactly once, in
order (0 lost, 0 twice, 0 out of order), kills and drains included. The
buckets above still judge the echoes.

With --resume (DESIGN §7) the run is --ack's, in one httpd child (the
registry of sessions is per child: a session resumes only in the child
that has it), and the location also has WSPersistResumeWindow 10s and
WSPersistResumeBuffer 4M. Each client's own connection is aborted every
2-5 s: it stops sending, waits until what it wrote has left its socket
(nothing in its transport's buffer, nothing unacknowledged, SIOCOUTQ;
one that is not out within 5 s fails the run) and 50-100 ms more, then
ends the connection with a reset (SO_LINGER 0) or a FIN followed by a
close, while echoes keep coming toward it. It reads what websockets had
queued, then reconnects for its id at once, or (3 in 10) after up to
1 s, giving the count of backend messages it received in the session:
the header X-WS-Persist-Received for even clients, the query
wsp_received=N for odd ones. The 101 must say X-WS-Persist-Session:
resumed; then it sends on, numbering on. Clients 2-3 of every 4 also
free kept messages now and then with a wsp-ack:N pong of their count.
Kills and drains go on meanwhile, detached sessions included. Checks,
on top of --ack's: every echo a client receives, across all its
connections, exactly once and in order (duplicates and reordering fail
as before); a missing echo passes only with the kill evidence above that
it never reached the proxy whole (in flight at kill, cut by the reset;
the other buckets cannot occur, as only processed messages count with
WSPersistAck On). Nothing is allowed for a client's abort: an echo the
proxy had and the client never got is "echo lost" or "unexplained".
The table counts aborts, resumes (header, query, after a pause), and
the proxy's lines: sessions detached, resumed (each count the proxy
logged must be the one the client gave, resume by resume), takeovers
and those of a connection the proxy still held open (closed 1008, as
replace does: a resume can come before the proxy has seen the abort);
any resume refused, resume without a count, detached
session ended (window, limit), or connection closed 4410 fails the run,
as does a run without resumes or detaches.
"""

import argparse
import asyncio
import ctypes
import fcntl
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

import websockets  # noqa: E402

import wsp_env  # noqa: E402
import wsp_manage  # noqa: E402
from wsp_env import CRASH_RE, Env, hget, new_id  # noqa: E402

MSG_RE = re.compile(r"^c(\d+):(\d+):")
SOAK_BACKEND = Path(__file__).resolve().parent / "soak_backend.py"
# a proxy that keeps a backend connection this long after its FIN fails
FIN_HOLD_LIMIT = 15.0
# --resume: the location's window, and what it keeps of written messages
# (each client's connection is aborted every 2-5 s and resumed within 1 s)
RESUME_WINDOW = "10s"
RESUME_BUFFER = "4M"


class SoakBackend(wsp_env.Backend):
    """t/soak_backend.py: logs what it read and echoed, callback by
    callback."""

    inc = 0                            # processes started so far
    state = None                       # --ack: the shared state directory

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        self.inc += 1
        cmd = [wsp_env.PYTHON, str(SOAK_BACKEND), "--port", str(self.port),
               "--name", self.name, "--log", str(self.log_path),
               "--inc", str(self.inc)]
        if self.state:
            cmd += ["--state", str(self.state)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)


class Client:
    def __init__(self, k, env, rate, big, resume=False):
        self.k = k
        self.env = env
        self.rate = rate
        self.big = big                 # chance of a large message
        self.id = new_id()
        # --resume: the client's connection is aborted now and then, and
        # it resumes the session, giving its count in a header (even k)
        # or the query (odd k); odd k//2 also frees kept messages with
        # wsp-ack:N pongs
        self.resume = resume
        self.count_how = "header" if k % 2 == 0 else "query"
        self.client_acks = (k // 2) % 2 == 1
        self.received = 0              # backend messages, this session
        self.aborts = {"rst": 0, "fin": 0}
        self.resumes = 0
        self.delayed = 0               # resumes after a pause
        self.not_flushed = 0           # aborts with output still ours
        self.resume_log = []           # (time, count given) per resume
        self.hold = False              # --resume: stop sending
        self.go = asyncio.Event()
        self.go.set()
        self.in_send = False
        self.aborting = None           # the connection being aborted
        self.aborter = None
        self.gone_4410 = 0             # connections closed "session gone"
        self.sent = 0
        self.sent_wall = {}            # seq -> time.time() sent
        self.sizes = {}                # seq -> length sent
        self.got = set()
        self.corrupt = 0               # echoes unlike what was sent
        self.last = -1
        self.duplicates = 0
        self.out_of_order = 0
        self.dropped = None            # why the connection ended early
        self.ws = None
        self.stop = False              # stop sending
        self.closing = False           # the soak is closing it
        self.reader = None

    async def run(self):
        try:
            self.ws = await wsp_env.connect(self.env, self.id,
                                            max_queue=None)
        except Exception as e:        # noqa: BLE001 - reported below
            self.dropped = "connect failed: %r" % e
            return
        if self.resume:
            session = hget(self.ws.response_headers, "X-WS-Persist-Session")
            if session != "new":
                self.dropped = "first connection: X-WS-Persist-Session " \
                    "%r, not 'new'" % session
        self.reader = asyncio.ensure_future(self.read(self.ws))
        if self.resume:
            self.aborter = asyncio.ensure_future(self.abort_loop())
        try:
            await self.send_loop()
        finally:
            if self.aborter is not None:
                await self.aborter

    async def send_loop(self):
        try:
            period = 1.0 / self.rate
            while not self.stop and not self.dropped:
                if self.hold:
                    # --resume: an abort is coming or under way; the next
                    # message goes on the resumed connection, numbered on
                    await self.go.wait()
                    continue
                self.in_send = True
                big = random.random() < self.big
                pad = "x" * (random.randint(64 << 10, 512 << 10) if big
                             else random.randint(0, 2000))
                msg = "c%d:%d:%s" % (self.k, self.sent, pad)
                self.sent_wall[self.sent] = time.time()
                self.sizes[self.sent] = len(msg)
                try:
                    if big:
                        # now and then a large one, in fragments that
                        # take their time: the proxy passes on each as it
                        # comes, so kills find messages half written,
                        # which the proxy must send again whole
                        await self.ws.send(self.trickle(msg))
                    else:
                        await self.ws.send(msg)
                finally:
                    self.in_send = False
                self.sent += 1
                await asyncio.sleep(period * random.uniform(0.5, 1.5))
        except websockets.ConnectionClosed as e:
            self.dropped = self.dropped or "closed while sending: %s" % e

    # --resume ----------------------------------------------------------

    async def abort_loop(self):
        """Every 2-5 s: stop sending, wait until what the client wrote has
        left its socket (the proxy's kernel acknowledged it all) and
        50-100 ms more, abort the connection (a reset, or a FIN then a
        close), and resume at once or after up to 1 s with the count of
        backend messages received in this session. Echoes keep coming
        until the abort: those the proxy wrote into the dying connection
        and the client never read are what the resume must send again."""
        try:
            while not self.stop and not self.dropped:
                until = time.monotonic() + random.uniform(2, 5)
                while time.monotonic() < until and not self.stop:
                    await asyncio.sleep(0.1)
                    if self.client_acks and self.ws.open \
                            and random.random() < 0.15:
                        try:
                            await self.ws.pong(b"wsp-ack:%d"
                                               % self.received)
                        except websockets.ConnectionClosed:
                            pass
                if self.stop or self.dropped:
                    break
                self.hold = True
                self.go.clear()
                while self.in_send:
                    await asyncio.sleep(0.002)
                if not await self.flushed():
                    self.not_flushed += 1
                await asyncio.sleep(random.uniform(0.05, 0.1))
                if self.dropped:
                    break
                await self.abort_and_resume()
                self.hold = False
                self.go.set()
        finally:
            self.hold = False
            self.go.set()

    async def flushed(self, limit=5.0):
        """Whether all the client wrote left its socket within limit s:
        nothing in the transport's buffer, nothing unacknowledged in the
        kernel's (SIOCOUTQ)."""
        tr = self.ws.transport
        sock = tr.get_extra_info("socket")
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if tr.get_write_buffer_size() == 0:
                q = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                struct.pack("i", 0))
                if struct.unpack("i", q)[0] == 0:
                    return True
            await asyncio.sleep(0.005)
        return False

    async def abort_and_resume(self):
        ws = self.ws
        sock = ws.transport.get_extra_info("socket")
        how = random.choice(("rst", "fin"))
        self.aborting = ws
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
        else:
            # a FIN; echoes still come until the close a moment later
            # (which resets if any are unread)
            sock.shutdown(socket.SHUT_WR)
            await asyncio.sleep(random.uniform(0, 0.03))
        ws.transport.abort()
        self.aborts[how] += 1
        # what websockets had queued is read; then the count is final
        await self.reader
        if random.random() < 0.3:
            self.delayed += 1
            await asyncio.sleep(random.uniform(0, 1.0))
        n = self.received
        try:
            if self.count_how == "header":
                new = await wsp_env.connect(
                    self.env, self.id, max_queue=None,
                    extra_headers={"X-WS-Persist-Received": str(n)})
            else:
                new = await wsp_env.connect(
                    self.env, self.id, max_queue=None,
                    query="wsp_received=%d" % n)
        except Exception as e:        # noqa: BLE001 - reported below
            self.dropped = self.dropped or "resume (%s %d) failed: %r" % (
                self.count_how, n, e)
            return
        self.resume_log.append((time.time(), n))
        self.ws = new
        self.aborting = None
        session = hget(new.response_headers, "X-WS-Persist-Session")
        self.reader = asyncio.ensure_future(self.read(new))
        if session != "resumed":
            self.dropped = self.dropped or "resume (%s %d) answered " \
                "X-WS-Persist-Session %r" % (self.count_how, n, session)
            return
        self.resumes += 1

    @staticmethod
    async def trickle(msg, size=32 << 10):
        for i in range(0, len(msg), size):
            if i:
                await asyncio.sleep(random.uniform(0.002, 0.01))
            yield msg[i:i + size]

    async def read(self, ws):
        try:
            async for m in ws:
                self.received += 1
                mt = MSG_RE.match(m)
                if not mt or int(mt.group(1)) != self.k:
                    self.dropped = "foreign message %r" % m[:60]
                    return
                seq = int(mt.group(2))
                if len(m) != self.sizes.get(seq) \
                        or m.count("x") != len(m) - mt.end():
                    self.corrupt += 1
                if seq in self.got:
                    self.duplicates += 1
                    continue
                if seq < self.last:
                    self.out_of_order += 1
                self.got.add(seq)
                self.last = max(self.last, seq)
        except websockets.ConnectionClosed:
            pass
        # the connection ended: only the soak's own close (or, --resume,
        # its abort) may end it
        if ws is self.aborting:
            return
        if ws.close_code == 4410:
            self.gone_4410 += 1
        if not self.closing and not self.dropped:
            self.dropped = "closed %s%s" % (
                self.close_text(ws),
                " after the clients stopped sending" if self.stop else "")

    def close_text(self, ws=None):
        ws = ws or self.ws
        return "code %s reason %r" % (ws.close_code, ws.close_reason)

    async def close(self):
        self.stop = True
        if self.ws is None:
            return
        self.closing = True
        if self.ws.open:
            await self.ws.close()
            if self.ws.close_code != 1000 and not self.dropped:
                self.dropped = "our close answered with %s" % \
                    self.close_text()
        if self.reader is not None:
            await self.reader


# --------------------------------------------------------------------------
# kills


LIBC = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438                   # x86_64 and most others
EPOLL_WAITS = {"232", "281", "441"}     # epoll_wait, _pwait, _pwait2


def freeze_idle(pid, tries=2000):
    """SIGSTOP pid while it waits in epoll_wait, i.e. between callbacks:
    then everything it read from its sockets is logged, and what it has
    not read is still in them. Stopped elsewhere, it is let go and tried
    again a moment later. Returns whether it worked."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        for _ in range(1000):
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
        with open("/proc/%d/syscall" % pid) as f:
            if f.read().split()[0] in EPOLL_WAITS:
                return True
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.0005)
    return False


class Copy:
    """A copy of one connection socket of a killed backend."""

    def __init__(self, kill, sock):
        self.kill = kill
        self.sock = sock
        self.proxy_port = sock.getpeername()[1]
        self.unread = b""              # what the process never read
        self.how = None                # "rst" or "fin": how it ended
        self.end_t = None              # when that went out
        self.outq = None               # unacknowledged output at the rst
        self.after = []                # [(time, bytes)] after the FIN
        self.closed_t = None           # when the proxy closed its end
        self.held = False              # past FIN_HOLD_LIMIT, reset by us
        self.done = None               # future: closed

    def read_after_fin(self):
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.after.append((time.time(), data))
        except BlockingIOError:
            return
        except OSError:
            pass
        self.finish(time.time())

    def finish(self, t):
        if self.closed_t is not None:
            return
        self.closed_t = t
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        if not self.done.done():
            self.done.set_result(None)

    async def wait_closed(self):
        try:
            await asyncio.wait_for(asyncio.shield(self.done), FIN_HOLD_LIMIT)
        except asyncio.TimeoutError:
            self.held = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
            self.finish(time.time())


def drain(s, quiet=0.003):
    """What s holds, and what still comes while it keeps arriving: read
    until nothing came for quiet seconds (the proxy's kernel sends what
    its send queue held as soon as the window opens). Returns (data,
    whether s saw its peer's end)."""
    data = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except BlockingIOError:
            if not select.select([s], [], [], quiet)[0]:
                return data, False
            continue
        except ConnectionError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


async def kill_keeping_sockets(be, stats, hang):
    """SIGKILL a backend, first taking copies of its connections' sockets
    (pidfd_getfd), so that what the proxy wrote into them and the dead
    process never read can be read back. It hangs (stopped) hang seconds
    first, as a dying backend may: the proxy's writes fill its sockets,
    and a large message is left half written. Then the copies end as the
    kernel would have ended them: a reset where data was unread, else a
    FIN. Returns the kill's record."""
    pid = be.proc.pid
    kill = {"pid": pid, "name": be.name, "inc": be.inc, "port": be.port,
            "frozen": freeze_idle(pid), "copies": [], "hang": hang}
    if not kill["frozen"]:
        stats["freeze_failed"] += 1
    await asyncio.sleep(hang)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir("/proc/%d/fd" % pid):
            try:
                if not os.readlink("/proc/%d/fd/%s" % (pid, name)) \
                        .startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = LIBC.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            s = socket.socket(fileno=fd)
            try:
                kill["copies"].append(Copy(kill, s))
            except OSError:
                s.close()                 # the listener
    finally:
        os.close(pidfd)
    kill["t"] = time.time()
    be.kill()
    loop = asyncio.get_running_loop()
    for cp in kill["copies"]:
        s = cp.sock
        s.setblocking(False)
        eof = False
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    eof = True
                    break
                cp.unread += chunk
        except (BlockingIOError, ConnectionError):
            pass
        cp.done = loop.create_future()
        if cp.unread:
            # unread data: the kernel answers the death with a reset,
            # which throws away the output the peer has not acknowledged
            # and what the proxy's kernel still holds for it: so first
            # all of that (what the proxy completely wrote) is read
            more, _ = drain(s)
            cp.unread += more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            q = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ,
                            struct.pack("i", 0))
            cp.outq = struct.unpack("i", q)[0]
            cp.how = "rst"
            cp.end_t = time.time()
            s.close()
            cp.closed_t = cp.end_t
            cp.done.set_result(None)
        else:
            # else a FIN, as on the death; what the proxy still writes
            # after it is kept, until the proxy closes its end
            cp.how = "fin"
            cp.end_t = time.time()
            s.shutdown(socket.SHUT_WR)
            if eof:
                cp.finish(cp.end_t)
            else:
                loop.add_reader(s.fileno(), cp.read_after_fin)
    return kill


async def chaos(env, backends, args, stats):
    """Kill a random backend that is up every --kill-every s, never the
    last one up; restart it 0.2-1 s later (a backend still starting is
    neither up nor killed)."""
    up = set(backends)
    tasks = set()

    async def restart(be, delay):
        await asyncio.sleep(delay)
        # its stdout from here on says "ready" (be.astart() parses the
        # whole event log each poll: too slow once it is large)
        try:
            off = be.out_path.stat().st_size
        except FileNotFoundError:
            off = 0
        be._spawn()
        deadline = time.monotonic() + 20
        while True:
            with open(be.out_path, "rb") as f:
                f.seek(off)
                if b"ready " in f.read():
                    break
            if be.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("backend %s did not restart" % be.name)
            await asyncio.sleep(0.02)
        up.add(be)

    def keep(coro):
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        await asyncio.sleep(args.kill_every)
        if len(up) < 2:
            continue
        be = random.choice(sorted(up, key=lambda b: b.name))
        up.discard(be)
        kill = await kill_keeping_sockets(
            be, stats, random.uniform(0, args.hang) if args.hang else 0)
        stats["kill_list"].append(kill)
        for cp in kill["copies"]:
            if cp.closed_t is None:
                keep(cp.wait_closed())
        keep(restart(be, random.uniform(0.2, 1.0)))
    while tasks:
        await asyncio.gather(*list(tasks))


def busiest(env, backends):
    """The backend with the most live pipes, as the manager counts them
    (ties: a random one). The kills tend to pile every pipe onto one
    backend (the others back off after their failures), and a drain of
    a backend without pipes moves nothing."""
    doc = wsp_manage.state(env)
    pipes = {b["url"]: b["pipes"]
             for b in wsp_manage.pool_of(doc)["backends"]}
    most = max(pipes.get(be.url, 0) for be in backends)
    return random.choice([be for be in backends
                          if pipes.get(be.url, 0) == most])


async def drainer(env, backends, args, stats):
    """Drain the busiest backend every --drain-every s through the
    manager, and enable it again half that later."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + args.duration
    if args.drain_every <= 0:
        return
    while time.monotonic() < end:
        await asyncio.sleep(args.drain_every / 2)
        be = await loop.run_in_executor(None, busiest, env, backends)
        for action in ("drain", "enable"):
            status, _, body = await loop.run_in_executor(
                None, wsp_manage.post, env, action, be.url)
            if status != 200:
                raise RuntimeError("manager %s %s: %s %s" % (
                    action, be.name, status, body[:200]))
            if action == "drain":
                stats["drains"] += 1
                await asyncio.sleep(args.drain_every / 2)


async def soak(args, env):
    backends = []
    if args.ack:            # also with --resume
        SoakBackend.state = env.root / "state"
        SoakBackend.state.mkdir(parents=True, exist_ok=True)
    for i in range(args.backends):
        be = SoakBackend(env, "b%d" % i, env.port())
        env.backends.append(be)
        backends.append(be.start())
    children = ("StartServers {n}\nServerLimit {n}\nMinSpareThreads 1\n"
                "MaxRequestWorkers {w}\n").format(n=args.children,
                                                 w=256 * args.children)
    # ws_persist:debug: the proxy's lines for the end of a retiring
    # backend's connection ("draining backend ... let go") are debug
    env.start_httpd(children + wsp_manage.MANAGER + env.location(
        "/ws/", backends,
        "WSPersistConnectTimeout 10",
        "WSPersistRetry 100ms 2s",
        "WSPersistBufferLimit 5M",
        *(["WSPersistAck On"] if args.ack else []),
        *(["WSPersistResumeWindow %s" % RESUME_WINDOW,
           "WSPersistResumeBuffer %s" % RESUME_BUFFER]
          if args.resume else []))
        + "LogLevel warn ws_persist:debug\n")
    wsp_env.wait_until(lambda: len(env.httpd.children()) == args.children,
                       20, what="%d children" % args.children)
    child = env.httpd.children()
    clients = [Client(k, env, args.rate,
                      1.0 / args.big_every if args.big_every > 0 else 0,
                      args.resume)
               for k in range(args.clients)]
    tasks = [asyncio.ensure_future(c.run()) for c in clients]
    stats = {"kill_list": [], "drains": 0, "freeze_failed": 0}
    t0 = time.monotonic()
    print("soak: %d clients, %d backends, %d children, %d s, a kill every "
          "%.2f s, a drain every %.2f s%s (driver %s)" % (
              args.clients, args.backends, args.children, args.duration,
              args.kill_every, args.drain_every,
              ", client aborts and resumes, window %s" % RESUME_WINDOW
              if args.resume else "", wsp_env.DRIVER), flush=True)
    await asyncio.gather(chaos(env, backends, args, stats),
                         drainer(env, backends, args, stats))
    for c in clients:
        c.stop = True
    await asyncio.gather(*tasks)
    stats["stopped_wall"] = time.time()
    # every backend is up again: let the echoes drain
    drain_end = time.monotonic() + 30
    last = -1
    while time.monotonic() < drain_end:
        got = sum(len(c.got) for c in clients)
        if got == sum(c.sent for c in clients):
            break
        if got == last:
            await asyncio.sleep(3)
            if got == sum(len(c.got) for c in clients):
                break
        last = got
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - t0
    stats["children_end"] = env.httpd.children()
    await asyncio.gather(*[c.close() for c in clients])
    return clients, stats, child, elapsed


# --------------------------------------------------------------------------
# the evidence


def frames_from(data, msg=None):
    """The client messages (masked frames, fragmented or not) in data,
    which starts at a frame boundary, msg the head of a message whose
    first fragments came before (or None). Returns [(offset after its last
    fragment, (k, seq) or None)] of the messages whose last fragment is
    whole in data, and the (k, seq) of a message cut short by the end of
    data (None if there is none or it cannot be named)."""
    out = []
    i = 0
    cur = None
    if msg is not None:
        m = MSG_RE.match(msg)
        cur = (int(m.group(1)), int(m.group(2))) if m else ("?",)
    while True:
        if i + 2 > len(data):
            break
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        off = i + 2
        if n == 126:
            if off + 2 > len(data):
                break
            n = struct.unpack("!H", data[off:off + 2])[0]
            off += 2
        elif n == 127:
            if off + 8 > len(data):
                break
            n = struct.unpack("!Q", data[off:off + 8])[0]
            off += 8
        if not b1 & 0x80:
            raise ValueError("unmasked frame at %d" % i)
        if off + 4 > len(data):
            break
        key = data[off:off + 4]
        off += 4
        op = b0 & 0x0F
        if op in (1, 2):
            head = bytes(b ^ key[j % 4] for j, b in
                         enumerate(data[off:min(off + 24, off + n)]))
            m = MSG_RE.match(head.decode("latin-1"))
            cur = (int(m.group(1)), int(m.group(2))) if m else ("?",)
        if off + n > len(data):
            break
        i = off + n
        if op in (0, 1, 2) and b0 & 0x80:
            out.append((i, cur if cur and len(cur) == 2 else None))
            cur = None
    return out, (cur if cur and len(cur) == 2 else None)


class BConn:
    """One backend connection, as the backend's log tells it."""

    def __init__(self, be, e):
        self.port = be.port
        self.name = be.name
        self.inc = e["inc"]
        self.pid = e["pid"]
        self.conn = e["conn"]
        self.open_t = e["t"]
        self.peer = e["peer"]
        self.client_id = (hget(e["headers"], "X-WS-Persist-Client-Id")
                          or "").lower()
        self.resume = hget(e["headers"], "X-WS-Persist-Resume")
        self.msgs = []                 # msg events
        self.kout = 0                  # output the kernel took, last known
        self.partial = (0, "", None)   # what it held: last known
        self.end = None                # its "end" event
        self.copy = None               # Copy when it was open at a kill
        self.proxy_end = None          # the proxy's line for its end

    def label(self):
        return "%s#%d pid %d conn %d (port %d)" % (
            self.name, self.inc, self.pid, self.conn, self.peer)


def backend_conns(backends):
    conns = {}
    for be in backends:
        for e in be.events():
            # a process is its backend's name and start: pids are reused
            key = (be.name, e.get("inc"), e.get("conn"))
            if e["ev"] == "open":
                conns[key] = BConn(be, e)
                continue
            c = conns.get(key)
            if c is None:
                continue
            if e["ev"] == "msg":
                c.msgs.append(e)
                c.kout = max(c.kout, e["kout"])
            elif e["ev"] == "out":
                c.kout = max(c.kout, e["kout"])
            elif e["ev"] == "partial":
                c.partial = (e["have"], e["hex"], e["msg"])
            elif e["ev"] == "end":
                c.end = e
    return conns


# error log: "[Wed Dec 02 13:10:00.123456 2026] [ws_persist:warn] ..."
PROXY_RE = re.compile(
    r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d)\.(\d{6}) (\d{4})\] "
    r"\[ws_persist:(\w+)\] .*?ws_persist: client ([0-9a-f-]{36}) "
    r"\([^)]*\) backend (\S+): (.*)$")
PORT_RE = re.compile(r"^wss?://[^/]*:(\d+)/")
END_RES = [
    ("interrupted", re.compile(r"^backend interrupted \((.*)\); failing")),
    ("ended while closing", re.compile(r"^backend ended while closing "
                                       r"\((.*)\)$")),
    ("let go", re.compile(r"^draining backend (\S+) let go \((.*)\)$")),
]


def proxy_ends(log):
    """(client id, backend port) -> [(time, kind, why)] of the proxy's
    lines that end a backend connection, in time order."""
    ends = {}
    for line in log.splitlines():
        m = PROXY_RE.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1) + " " + m.group(3),
                                      "%a %b %d %H:%M:%S %Y")) \
            + int(m.group(2)) / 1e6
        cid, url, rest = m.group(5), m.group(6), m.group(7)
        for kind, rx in END_RES:
            mm = rx.match(rest)
            if not mm:
                continue
            if kind == "let go":
                url, why = mm.group(1), mm.group(2)
            else:
                why = mm.group(1)
            pm = PORT_RE.match(url)
            if pm:
                ends.setdefault((cid, int(pm.group(1))), []).append(
                    (t, kind, why))
    for v in ends.values():
        v.sort()
    return ends


def account(clients, backends, kills, log, ack=False):
    """Every missing message into its bucket, with the evidence. ack:
    WSPersistAck On, where what a backend never read is sent again and
    only what backends processed counts."""
    conns = backend_conns(backends)
    by_client = {c.id: c for c in clients}
    ends = proxy_ends(log)
    res = {"foreign": [], "unmatched_copies": 0, "unparsed_copies": [],
           "unnoticed_kills": [], "fin_held": [], "after_fin_frames": 0,
           "fin_to_proxy_ms": []}
    for c in conns.values():
        for t, kind, why in ends.get((c.client_id, c.port), []):
            if t > c.open_t:
                c.proxy_end = (t, kind, why)
                break
    # the copies, to their connections
    by_peer = {}
    for c in conns.values():
        by_peer.setdefault((c.name, c.inc, c.peer), []).append(c)
    for kill in kills:
        for cp in kill["copies"]:
            cands = by_peer.get((kill["name"], kill["inc"], cp.proxy_port),
                                [])
            if not cands:
                res["unmatched_copies"] += 1    # a handshake under way
                continue
            c = max(cands, key=lambda x: x.open_t)
            c.copy = cp
            if cp.held:
                res["fin_held"].append(c)
    # deliveries: (k, seq) -> [(kind, conn, detail)]
    deliv = {}
    partials = {}
    order = {}                         # client k -> [(open_t, [seq...])]
    for c in conns.values():
        seqs = []
        for e in c.msgs:
            mt = MSG_RE.match(e["head"])
            if not mt:
                continue
            ks = (int(mt.group(1)), int(mt.group(2)))
            cl = clients[ks[0]] if ks[0] < len(clients) else None
            if cl is None or cl.id != c.client_id:
                res["foreign"].append((ks, c))
            deliv.setdefault(ks, []).append(("recv", c, e))
            seqs.append(ks)
        cp = c.copy
        if cp is not None:
            # what the backend held: one frame's start, of which the log
            # has the header and the head; the rest of its bytes only
            # matter by their number
            have, head, msg = c.partial
            pre = bytes.fromhex(head)
            stream = pre + bytes(have - len(pre)) + cp.unread
            marks = [len(stream)]
            for t, data in cp.after:
                stream += data
                marks.append((len(stream), t))
            try:
                whole, part = frames_from(stream, msg)
            except ValueError as e:
                res["unparsed_copies"].append((c, str(e)))
                whole, part = [], None
            for end, ks in whole:
                if ks is None:
                    continue
                if end <= marks[0]:
                    deliv.setdefault(ks, []).append(("unread", c, None))
                else:
                    t = next(t for n, t in marks[1:] if end <= n)
                    deliv.setdefault(ks, []).append(("after_fin", c, t))
                    res["after_fin_frames"] += 1
                if not ack:
                    seqs.append(ks)
            if part:
                partials.setdefault(part, []).append(c)
            if not c.proxy_end:
                res["unnoticed_kills"].append(c)
            if cp.how == "fin" and c.proxy_end:
                res["fin_to_proxy_ms"].append(
                    (c.proxy_end[0] - cp.end_t) * 1000)
        cl = by_client.get(c.client_id)
        if cl is not None and seqs:
            order.setdefault(cl.k, []).append((c.open_t, seqs))
    # with WSPersistAck On a message written to a backend that never
    # read it is sent again: only what backends processed counts twice
    res["backend_duplicates"] = sorted(
        ks for ks, ds in deliv.items()
        if len([d for d in ds if not ack or d[0] == "recv"]) > 1)
    bad_order = 0
    for k, lst in order.items():
        last = -1
        for _, seqs in sorted(lst, key=lambda x: x[0]):
            for kk, s in seqs:
                if kk == k and s <= last:
                    bad_order += 1
                last = max(last, s) if kk == k else last
    res["backend_out_of_order"] = bad_order

    buckets = {b: [] for b in ("in_flight_at_kill", "unread_at_kill",
                               "written_after_fin", "echo_cut_by_reset",
                               "echo_lost", "unexplained")}
    for cl in clients:
        for seq in range(cl.sent):
            if seq in cl.got:
                continue
            ks = (cl.k, seq)
            # with WSPersistAck On one written but never read was sent
            # again: only a backend that processed it can explain its echo
            ds = [d for d in deliv.get(ks, []) if d[1].client_id == cl.id
                  and (not ack or d[0] == "recv")]
            bucket, why = classify(ds, partials.get(ks, []))
            buckets[bucket].append((cl, seq, why))
    res["buckets"] = buckets
    res["conns"] = conns
    # frames cut by a kill: the proxy must send them again, whole
    res["cut"] = len(partials)
    res["cut_replayed"] = sum(
        1 for ks in partials
        if any(d[0] == "recv" for d in deliv.get(ks, []))
        or (ks[0] < len(clients) and ks[1] in clients[ks[0]].got))
    return res


def classify(ds, partials):
    """(bucket, evidence) of one missing message from its deliveries."""
    if not ds:
        if partials:
            return "unexplained", "only part of it reached %s, never " \
                "replayed whole" % ", ".join(c.label() for c in partials)
        return "unexplained", "no backend connection had it whole"
    kind, c, detail = ds[-1]
    cp = c.copy
    pe = c.proxy_end
    pe_text = "proxy: %s (%s) %+.1f ms after the %s" % (
        pe[1], pe[2], (pe[0] - cp.end_t) * 1000, cp.how) \
        if pe and cp else "proxy: %s" % (
            "%s (%s)" % pe[1:] if pe else "no end line")
    if kind == "unread":
        if pe and pe[0] >= cp.end_t:
            return "unread_at_kill", "whole in %s's socket at the kill; " \
                "%s" % (c.label(), pe_text)
        return "unexplained", "whole in %s's socket at the kill, but %s" % (
            c.label(), pe_text)
    if kind == "after_fin":
        if pe and pe[1] == "interrupted" and pe[2] == "connection closed" \
                and pe[0] >= cp.end_t and detail <= cp.closed_t:
            return "written_after_fin", "on %s %.1f ms after the FIN; %s" % (
                c.label(), (detail - cp.end_t) * 1000, pe_text)
        return "unexplained", "written to %s after its FIN, and %s" % (
            c.label(), pe_text)
    e = detail
    in_kernel = c.kout >= e["end"]
    if cp is None:
        if in_kernel:
            return "echo_lost", "%s echoed it (not killed; its end: %s)" % (
                c.label(), c.end and c.end["how"])
        return "unexplained", "%s had it whole, never echoed it, was not " \
            "killed" % c.label()
    if not in_kernel:
        if e["t"] <= cp.kill["t"] and pe and pe[0] >= cp.end_t:
            return "in_flight_at_kill", "%s had it whole, its echo not " \
                "in the kernel at the kill; %s" % (c.label(), pe_text)
        return "unexplained", "%s had it whole, killed before echoing, " \
            "but %s" % (c.label(), pe_text)
    acked = c.kout - (cp.outq or 0)
    if cp.how == "rst" and e["end"] > acked and pe and pe[0] >= cp.end_t \
            and pe[2] != "connection closed":
        return "echo_cut_by_reset", "%s echoed it, up to byte %d of its " \
            "output; the proxy's kernel had acknowledged %d at the reset; " \
            "%s" % (c.label(), e["end"], acked, pe_text)
    return "echo_lost", "%s echoed it (ends at byte %d, %s, acknowledged " \
        "%d); %s" % (c.label(), e["end"], cp.how, acked, pe_text)


# --------------------------------------------------------------------------
# the report


ALLOWED = ("in_flight_at_kill", "unread_at_kill", "written_after_fin",
           "echo_cut_by_reset")


def state_account(clients, state):
    """--ack: what the backends' session files (the record of every
    message processed, t/soak_backend.py --state) say of each client's
    messages: each must be processed once, in order, numbered 1..sent."""
    out = {"processed": 0, "lost": [], "twice": [], "out_of_order": [],
           "misnumbered": []}
    for c in clients:
        try:
            lines = (state / c.id).read_text().splitlines()
        except FileNotFoundError:
            lines = []
        seen = set()
        last = -1
        for i, line in enumerate(lines):
            seq, head = line.split(" ")[:2]
            n = int(MSG_RE.match(head + ":").group(2))
            if int(seq) != i + 1:
                out["misnumbered"].append((c.k, n, int(seq)))
            if n in seen:
                out["twice"].append((c.k, n))
            elif n < last:
                out["out_of_order"].append((c.k, n))
            seen.add(n)
            last = max(last, n)
        out["processed"] += len(seen)
        out["lost"] += [(c.k, n) for n in range(c.sent) if n not in seen]
    return out


RESUMED_RE = re.compile(r"ws_persist: client ([0-9a-f-]{36}) .*session "
                        r"resumed: the client received (\d+) message")


def resume_account(clients, log):
    """--resume: the clients' aborts and resumes, and the proxy's lines
    for them; the counts the proxy logged must be the ones the clients
    gave, resume by resume."""
    out = {"rst": sum(c.aborts["rst"] for c in clients),
           "fin": sum(c.aborts["fin"] for c in clients),
           "not_flushed": sum(c.not_flushed for c in clients),
           "resumes": sum(c.resumes for c in clients),
           "header": sum(c.resumes for c in clients
                         if c.count_how == "header"),
           "query": sum(c.resumes for c in clients
                        if c.count_how == "query"),
           "delayed": sum(c.delayed for c in clients),
           "gone": sum(c.gone_4410 for c in clients),
           "detached": len(re.findall(r"\): session detached for", log)),
           "took_over": len(re.findall(r"took over the live pipe", log)),
           "half_open": len(re.findall(r"a newer connection takes the pipe "
                                       r"over", log)),
           "no_count": len(re.findall(r"session resumed without a count",
                                      log)),
           "refused": [l for l in log.splitlines()
                       if "resume refused" in l],
           "expired": [l for l in log.splitlines()
                       if re.search(r"detached session ends|session ends "
                                    r"\(.*4410", l)],
           "mismatch": []}
    counts = {}
    for m in RESUMED_RE.finditer(log):
        counts.setdefault(m.group(1), []).append(int(m.group(2)))
    out["resumed"] = sum(len(v) for v in counts.values())
    for c in clients:
        want = [n for _, n in c.resume_log]
        got = counts.get(c.id, [])
        if got != want:
            out["mismatch"].append((c.id, got, want))
    return out


def report(args, env, clients, stats, child, elapsed, stop_problems):
    log = env.httpd.log_text() if env.httpd else ""
    acc = account(clients, env.backends, stats["kill_list"], log, args.ack)
    b = acc["buckets"]
    failovers = len(re.findall(r"backend interrupted", log))
    moves = len(re.findall(r"moved off draining backend", log))
    problems = env.log_problems()
    crashes = [l for l in log.splitlines() if CRASH_RE.search(l)]
    kids = stats["children_end"]
    if child and kids and kids != child:
        crashes.append("child replaced: %r -> %r" % (child, kids))
    dropped = [(c.k, c.dropped) for c in clients if c.dropped]
    sent = sum(c.sent for c in clients)
    kills = stats["kill_list"]
    ms = sorted(acc["fin_to_proxy_ms"])
    rows = [
        # (key, value, fails when)
        ("duration_s", round(elapsed, 1), None),
        ("driver", wsp_env.DRIVER, None),
        ("kills", len(kills), "zero"),
        ("kills not frozen between callbacks", stats["freeze_failed"],
         "nonzero"),
        ("connections open at kills", sum(len(k["copies"]) for k in kills),
         None),
        ("  ended with a reset (data unread)",
         sum(cp.how == "rst" for k in kills for cp in k["copies"]), None),
        ("  ended with a FIN",
         sum(cp.how == "fin" for k in kills for cp in k["copies"]), None),
        ("  held by the proxy past %d s after the FIN" % FIN_HOLD_LIMIT,
         len(acc["fin_held"]), "nonzero"),
        ("  end never logged by the proxy", len(acc["unnoticed_kills"]),
         "nonzero"),
        ("  FIN -> proxy's line, ms p50/max",
         "%.1f/%.1f" % (ms[len(ms) // 2], ms[-1]) if ms else "-", None),
        ("drains", stats["drains"], "zero"),
        ("moves", moves, "zero"),
        ("failovers", failovers, "zero"),
        ("messages sent", sent, "zero"),
        ("messages echoed", sum(len(c.got) for c in clients), None),
        ("messages missing", sum(len(v) for v in b.values()), None),
        ("  allowed: in flight at kill", len(b["in_flight_at_kill"]), None),
        ("  allowed: unread at kill", len(b["unread_at_kill"]), None),
        ("  allowed: written after FIN", len(b["written_after_fin"]), None),
        ("  echo-path losses (echoed, client never got it)",
         len(b["echo_cut_by_reset"]) + len(b["echo_lost"]), None),
        ("    allowed: cut by the reset", len(b["echo_cut_by_reset"]), None),
        ("    not allowed", len(b["echo_lost"]), "nonzero"),
        ("  unexplained", len(b["unexplained"]), "nonzero"),
        ("frames written after a FIN (lost or not)", acc["after_fin_frames"],
         None),
        ("messages cut at a kill (part in the socket)", acc["cut"], None),
        ("  then received whole by another connection", acc["cut_replayed"],
         None),
        ("echoes unlike the message sent", sum(c.corrupt for c in clients),
         "nonzero"),
        ("duplicates at clients",
         sum(c.duplicates for c in clients), "nonzero"),
        ("out of order at clients",
         sum(c.out_of_order for c in clients), "nonzero"),
        ("received whole twice by backends",
         len(acc["backend_duplicates"]), "nonzero"),
        ("out of order at backends", acc["backend_out_of_order"], "nonzero"),
        ("on another client's connection", len(acc["foreign"]), "nonzero"),
        ("unparsable socket copies", len(acc["unparsed_copies"]), "nonzero"),
        ("child crashes", len(crashes), "nonzero"),
        ("connections dropped", len(dropped), "nonzero"),
        ("error log / backend problems", len(problems) - sum(
            p.startswith("crash: ") for p in problems), "nonzero"),
        ("httpd stop problems", len(stop_problems), "nonzero"),
    ]
    if args.ack:
        st = state_account(clients, SoakBackend.state)
        repeats = sum(1 for be in env.backends for _ in be.events("repeat"))
        rows += [
            ("WSPersistAck On: processed (backends' state files)",
             st["processed"], "zero"),
            ("  sent, never processed", len(st["lost"]), "nonzero"),
            ("  processed twice", len(st["twice"]), "nonzero"),
            ("  processed out of order", len(st["out_of_order"]), "nonzero"),
            ("  numbered unlike the client's order", len(st["misnumbered"]),
             "nonzero"),
            ("  sent again, dropped by number (repeats)", repeats, None),
        ]
    if args.resume:
        ra = resume_account(clients, log)
        rows += [
            ("resume: client aborts (reset / FIN, then close)",
             "%d/%d" % (ra["rst"], ra["fin"]), None),
            ("  aborts with the client's output not yet out",
             ra["not_flushed"], "nonzero"),
            ("  resumes (101, X-WS-Persist-Session: resumed)",
             ra["resumes"], "zero"),
            ("    count in the header / in the query",
             "%d/%d" % (ra["header"], ra["query"]), None),
            ("    after a pause of up to 1 s", ra["delayed"], None),
            ("  proxy: sessions detached", ra["detached"], "zero"),
            ("  proxy: sessions resumed with a count", ra["resumed"],
             None),
            ("  proxy: takeovers (\"took over the live pipe\")",
             ra["took_over"], None),
            ("    of a connection still open (closed 1008)", ra["half_open"],
             None),
            ("  proxy: counts unlike the clients'", len(ra["mismatch"]),
             "nonzero"),
            ("  proxy: resumes without a count", ra["no_count"],
             "nonzero"),
            ("  proxy: resumes refused", len(ra["refused"]), "nonzero"),
            ("  proxy: detached sessions ended", len(ra["expired"]),
             "nonzero"),
            ("  closed 4410 (session gone)", ra["gone"], "nonzero"),
        ]
    failed = []
    print("\nsoak report (driver %s)" % wsp_env.DRIVER)
    print("  %-50s %10s  %-9s %s" % ("", "count", "rule", "verdict"))
    for key, v, when in rows:
        bad = (when == "zero" and not v) or (when == "nonzero" and v)
        if bad:
            failed.append(key.strip())
        rule = {"zero": "> 0", "nonzero": "0"}.get(when, "")
        allowed = key.strip().startswith("allowed")
        print("  %-50s %10s  %-9s %s" % (
            key, v, "allowed" if allowed else rule,
            "FAIL" if bad else ("ok" if when else "")))
    for k, why in dropped[:10]:
        print("  dropped: client %d (%s): %s" % (k, clients[k].id, why))
    for l in crashes[:10]:
        print("  crash: %s" % l)
    for p in problems[:10]:
        print("  problem: %s" % p[:2000])
    for p in stop_problems[:5]:
        print("  stop: %s" % p[:2000])
    for c in acc["fin_held"][:5]:
        print("  held after FIN: %s" % c.label())
    for c in acc["unnoticed_kills"][:5]:
        print("  end not logged by the proxy: %s, client %s" % (
            c.label(), c.client_id))
    for c, e in acc["unparsed_copies"][:5]:
        print("  unparsable copy of %s: %s" % (c.label(), e))
    for ks in acc["backend_duplicates"][:10]:
        print("  received twice by backends: client %d seq %d" % ks)
    for ks, c in acc["foreign"][:5]:
        print("  client %d seq %d on %s (client %s)" % (
            ks[0], ks[1], c.label(), c.client_id))

    if args.resume:
        for cid, got, want in ra["mismatch"][:5]:
            print("  resume counts of %s: proxy %s, client %s" % (
                cid, got, want))
        for l in (ra["refused"] + ra["expired"])[:10]:
            print("  resume: %s" % l)

    def when(cl, seq):
        w = cl.sent_wall.get(seq, 0)
        return time.strftime("%H:%M:%S", time.localtime(w)) \
            + ".%06d" % (w % 1 * 1e6)

    if args.ack:
        ranges = {}
        for k, n in st["lost"]:
            r = ranges.setdefault(k, [])
            if r and r[-1][1] == n - 1:
                r[-1][1] = n
            else:
                r.append([n, n])
        for k, r in sorted(ranges.items())[:20]:
            print("  state file: client %d (%s): never processed %s" % (
                k, clients[k].id, ", ".join(
                    "%d-%d" % tuple(x) if x[0] != x[1] else str(x[0])
                    for x in r)))
        for what in ("lost", "twice", "out_of_order", "misnumbered"):
            for x in st[what][:10]:
                print("  state file: %s: client %d seq %s" % (
                    what, x[0], " ".join(str(v) for v in x[1:])))
    for bucket in ("echo_lost", "unexplained"):
        for cl, seq, why in b[bucket][:20]:
            print("  %s: client %d seq %d sent %s: %s" % (
                bucket, cl.k, seq, when(cl, seq), why))
    for bucket in ALLOWED:
        for cl, seq, why in b[bucket][:10 if args.verbose else 2]:
            print("  %s: client %d seq %d sent %s: %s" % (
                bucket, cl.k, seq, when(cl, seq), why))
    out = {key.strip(): v for key, v, _ in rows}
    out["failed"] = failed
    Path("build").mkdir(exist_ok=True)
    with open("build/soak.json", "w") as f:
        json.dump(out, f, indent=1)
    print("soak %s (figures in build/soak.json)%s" % (
        "FAILED" if failed else "passed",
        (": " + ", ".join(failed)) if failed else ""))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20,
                    help="messages per second per client")
    ap.add_argument("--kill-every", type=float, default=0.3)
    ap.add_argument("--hang", type=float, default=0.03,
                    help="a killed backend hangs (stopped) up to this many "
                    "s before it dies")
    ap.add_argument("--big-every", type=float, default=50,
                    help="one message in this many (on average) is 64-512 "
                    "KB instead of up to 2 KB; 0: none")
    ap.add_argument("--children", type=int, default=None,
                    help="httpd children (default 2; --resume: 1, as the "
                    "registry of sessions is per child)")
    ap.add_argument("--drain-every", type=float, default=2.0)
    ap.add_argument("--driver", choices=sorted(wsp_env.DRIVER_CONF),
                    default=wsp_env.DRIVER)
    ap.add_argument("--ack", action="store_true",
                    help="WSPersistAck On with backends that keep session "
                    "state: every message must be processed exactly once")
    ap.add_argument("--resume", action="store_true",
                    help="--ack, plus WSPersistResumeWindow: clients' "
                    "connections are aborted and resumed; every message "
                    "each way must arrive exactly once, in order")
    ap.add_argument("--keep", action="store_true",
                    help="keep the server root (logs) afterwards")
    ap.add_argument("--verbose", action="store_true",
                    help="list more allowed losses with their evidence")
    args = ap.parse_args()
    if args.backends < 2:
        ap.error("--backends must be at least 2")
    if args.resume:
        args.ack = True
        if args.children not in (None, 1):
            ap.error("--resume needs one child: a session can only be "
                     "resumed in the child that has it")
        args.children = 1
    elif args.children is None:
        args.children = 2
    wsp_env.DRIVER = args.driver
    root = Path(tempfile.mkdtemp(prefix="wsp-soak-"))
    os.chmod(root, 0o755)
    env = Env(root / "root")
    # The chaos's own warnings: every pipe of a killed or drained backend
    # fails over, and a killed backend refuses connects until it is back.
    # Any other ws_persist warning (and any error line) fails the run.
    env.expect_failover(why=r"connection closed|read failed|write failed"
                        r"|no pong in time")
    env.expect_refused(None)
    died = (r"(connect: Connection refused|(reading|sending) the handshake: "
            r"(Connection reset by peer|Broken pipe)|connection closed during "
            r"the handshake)")
    env.expect_warn(r"ws_persist: client \S+ \(\S+\) backend \S+: backend "
                    r"draining: replacement \S+ failed \(%s\); staying for now"
                    % died)
    env.expect_warn(r"ws_persist: client \S+ \(\S+\) backend \S+: handshake "
                    r"failed: %s$" % died)
    rc = 1
    try:
        clients, stats, child, elapsed = asyncio.run(soak(args, env))
        stop_problems = env.shutdown()
        rc = report(args, env, clients, stats, child, elapsed,
                    stop_problems)
    finally:
        env.shutdown()
        env.cleanup()
        if args.keep or rc:
            print("server root kept: %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
