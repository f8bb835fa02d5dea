#!/usr/bin/python3
"""Chaos soak for mod_ws_persist: make -f Makefile.apxs soak

    /usr/bin/python3 t/soak.py [--duration 120] [--clients 50]
        [--backends 3] [--rate 20] [--kill-every 0.3] [--driver event]
        [--children 2] [--drain-every 2]

Starts the real apache2 with the built module in front of --backends echo
backends (t/backend.py, each logging what it receives), connects --clients
clients that each stream numbered messages ("c<k>:<n>:...") at --rate
messages a second, and for --duration seconds SIGKILLs a random backend
every --kill-every seconds (never the last one up) and restarts it after
0.2-1 s. Meanwhile, through the ws-persist-manager, it drains a random
backend every --drain-every seconds and enables it again half that later,
so pipes move between backends while others fail over; httpd runs
--children children sharing the backend state. Then it stops sending,
lets the echoes drain and reports:

  kills, drains, moves (pipes that left a draining backend), failovers
  (the proxy's "backend interrupted" lines), messages
  sent and echoed, messages lost in flight (received by a backend, as its
  log shows, that was killed before its echo got out: what DESIGN §3
  allows), messages lost otherwise, duplicates, out-of-order echoes,
  child crashes, connections dropped.

Exits 1 when duplicates, out-of-order echoes, child crashes, dropped
connections or unexplained losses are not 0. Only loopback is used.

Messages the proxy completely wrote into a backend's socket that the
backend process was killed before reading are lost too, and allowed
(completely written, then the backend died), but no backend log shows
them. So each kill stops the backend (SIGSTOP), takes copies of its
connections' sockets (pidfd_getfd, as root), SIGKILLs it and reads from
the copies what the dead process never read ("unread at kill"). Then each
copy is closed as the kernel closes a dead process's socket: a reset
where data was unread, else a FIN; after a FIN the copy keeps reading for
half a second, and a message the proxy wrote there after the backend's
FIN had reached it is "written after FIN" (completely written to a dead
backend: allowed, but a proxy that reads before it writes avoids most of
them). The backends (t/soak_backend.py) log a message in the callback
that read its first bytes ("in flight" when one that was killed logged
it and the echo never came). Anything else missing is "unexplained" and
fails the run; those are listed with the kills near them.
"""

import argparse
import asyncio
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

import websockets  # noqa: E402

import wsp_env  # noqa: E402
import wsp_manage  # noqa: E402
from wsp_env import CRASH_RE, Env, new_id  # noqa: E402

MSG_RE = re.compile(r"^c(\d+):(\d+):")
SOAK_BACKEND = Path(__file__).resolve().parent / "soak_backend.py"


class SoakBackend(wsp_env.Backend):
    """t/soak_backend.py: logs a message in the callback that read it."""

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [wsp_env.PYTHON, str(SOAK_BACKEND), "--port", str(self.port),
               "--name", self.name, "--log", str(self.log_path)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)


class Client:
    def __init__(self, k, env, rate):
        self.k = k
        self.env = env
        self.rate = rate
        self.id = new_id()
        self.sent = 0
        self.sent_at = {}              # seq -> monotonic time sent
        self.sizes = {}                # seq -> payload bytes
        self.sent_wall = {}            # seq -> time.time() sent
        self.got = set()
        self.last = -1
        self.duplicates = 0
        self.out_of_order = 0
        self.dropped = None            # why the connection ended early
        self.ws = None
        self.stop = False

    async def run(self):
        try:
            self.ws = await wsp_env.connect(self.env, self.id,
                                            max_queue=None)
        except Exception as e:        # noqa: BLE001 - reported below
            self.dropped = "connect failed: %r" % e
            return
        reader = asyncio.ensure_future(self.read())
        try:
            period = 1.0 / self.rate
            while not self.stop and not self.dropped:
                pad = "x" * random.randint(0, 2000)
                msg = "c%d:%d:%s" % (self.k, self.sent, pad)
                self.sent_at[self.sent] = time.monotonic()
                self.sent_wall[self.sent] = time.time()
                self.sizes[self.sent] = len(msg)
                await self.ws.send(msg)
                self.sent += 1
                await asyncio.sleep(period * random.uniform(0.5, 1.5))
        except websockets.ConnectionClosed as e:
            self.dropped = "closed while sending: %s" % e
        self.reader = reader

    async def read(self):
        try:
            async for m in self.ws:
                mt = MSG_RE.match(m)
                if not mt or int(mt.group(1)) != self.k:
                    self.dropped = "foreign message %r" % m[:60]
                    return
                seq = int(mt.group(2))
                if seq in self.got:
                    self.duplicates += 1
                    continue
                if seq < self.last:
                    self.out_of_order += 1
                self.got.add(seq)
                self.last = max(self.last, seq)
        except websockets.ConnectionClosed as e:
            if not self.stop:
                self.dropped = "closed: %s" % e

    async def close(self):
        self.stop = True
        if self.ws is not None and self.ws.open:
            await self.ws.close()


async def chaos(env, backends, args, stats):
    """Kill a random backend that is up every --kill-every s, never the
    last one up; restart it 0.2-1 s later (a backend still starting is
    neither up nor killed)."""
    up = set(backends)
    restarts = set()

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

    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        await asyncio.sleep(args.kill_every)
        if len(up) < 2:
            continue
        be = random.choice(sorted(up, key=lambda b: b.name))
        up.discard(be)
        stats["killed_pids"].add(be.proc.pid)
        stats["kill_times"].append((time.monotonic(), be.name))
        after_fin = []
        stats["unread"] += kill_keeping_sockets(be, after_fin)
        reap = asyncio.ensure_future(reap_after_fin(after_fin, stats))
        restarts.add(reap)
        reap.add_done_callback(restarts.discard)
        stats["kills"] += 1
        t = asyncio.ensure_future(restart(be, random.uniform(0.2, 1.0)))
        restarts.add(t)
        t.add_done_callback(restarts.discard)
    if restarts:
        await asyncio.gather(*restarts)


async def drainer(env, backends, args, stats):
    """Drain a random backend every --drain-every s through the manager,
    and enable it again half that later."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + args.duration
    if args.drain_every <= 0:
        return
    while time.monotonic() < end:
        await asyncio.sleep(args.drain_every / 2)
        be = random.choice(backends)
        for action in ("drain", "enable"):
            status, _, body = await loop.run_in_executor(
                None, wsp_manage.post, env, action, be.url)
            if status != 200:
                raise RuntimeError("manager %s %s: %s %s" % (
                    action, be.name, status, body[:200]))
            if action == "drain":
                stats["drains"] += 1
                await asyncio.sleep(args.drain_every / 2)


LIBC = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438                   # x86_64 and most others


EPOLL_WAITS = {"232", "281"}            # epoll_wait, epoll_pwait (x86_64)


def freeze_idle(pid, tries=500):
    """SIGSTOP pid while it waits in epoll_wait, i.e. between callbacks:
    then everything it read from its sockets is logged, and what it has
    not read is still in them. Stopped elsewhere, it is let go and tried
    again a moment later."""
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


def kill_keeping_sockets(be, after_fin):
    """SIGKILL a backend, first taking copies of its connections' sockets
    (pidfd_getfd), so that what the proxy wrote into them and the dead
    process never read can be read back: a message found whole in there
    was completely written to a backend that then died (lost, and allowed
    by DESIGN 3). Then the copies are closed as the kernel would have
    closed them: a reset where data was unread, else a FIN. Returns [(client k, seq)] of the messages found."""
    pid = be.proc.pid
    freeze_idle(pid)                      # it reads nothing more
    socks = []
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
                s.getpeername()
                socks.append(s)
            except OSError:
                s.close()                 # the listener
    finally:
        os.close(pidfd)
    be.kill()
    found = []
    for s in socks:
        s.setblocking(False)
        data = b""
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except (BlockingIOError, ConnectionError):
            pass
        if data:
            # unread data: the kernel answers the death with a reset
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            try:
                data += s.recv(1 << 20)   # what landed meanwhile
            except (BlockingIOError, ConnectionError):
                pass
            s.close()
            found += frames_in(data)
        else:
            # else a FIN, as on the death; what the proxy still writes
            # after it is kept to be counted (reap_after_fin)
            s.shutdown(socket.SHUT_WR)
            after_fin.append(s)
    return found


async def reap_after_fin(socks, stats):
    """Half a second after the FIN: the frames the proxy wrote into the
    dead backend's connection after its FIN had arrived (completely
    written, so allowed to be lost; but the proxy could have seen the FIN
    first). Then reset them, as the kernel does for data to a dead
    socket."""
    await asyncio.sleep(0.5)
    for s in socks:
        data = b""
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except (BlockingIOError, ConnectionError):
            pass
        stats["after_fin"] += frames_in(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        s.close()


def frames_in(data):
    """(k, seq) of the whole masked "c<k>:<seq>:" frames in data. The
    backend may have read part of a frame, so frame starts are searched
    for, not assumed."""
    out = []
    i = 0
    while i + 6 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        off = i + 2
        if b0 != 0x81 or not b1 & 0x80:
            i += 1
            continue
        if n == 126:
            if off + 2 > len(data):
                break
            n = struct.unpack("!H", data[off:off + 2])[0]
            off += 2
        elif n == 127:
            i += 1
            continue
        key = data[off:off + 4]
        off += 4
        if off + n > len(data) or len(key) < 4:
            i += 1
            continue
        head = bytes(b ^ key[j % 4] for j, b in enumerate(data[off:off + 24]))
        m = MSG_RE.match(head.decode("latin-1"))
        if not m:
            i += 1
            continue
        out.append((int(m.group(1)), int(m.group(2))))
        i = off + n
    return out


def backend_receipts(backends):
    """(client k, seq) -> pids of the backend processes that logged it."""
    seen = {}
    for be in backends:
        for e in be.events("msg"):
            mt = MSG_RE.match(e.get("head", ""))
            if mt:
                seen.setdefault((int(mt.group(1)), int(mt.group(2))),
                                set()).add(e["pid"])
    return seen


async def soak(args, env):
    backends = []
    for i in range(args.backends):
        be = SoakBackend(env, "b%d" % i, env.port())
        env.backends.append(be)
        backends.append(be.start())
    children = ("StartServers {n}\nServerLimit {n}\nMinSpareThreads 1\n"
                "MaxRequestWorkers {w}\n").format(n=args.children,
                                                 w=256 * args.children)
    env.start_httpd(children + wsp_manage.MANAGER + env.location(
        "/ws/", backends,
        "WSPersistConnectTimeout 10",
        "WSPersistRetry 100ms 2s",
        "WSPersistBufferLimit 5M") + "LogLevel warn ws_persist:info\n")
    wsp_env.wait_until(lambda: len(env.httpd.children()) == args.children,
                       20, what="%d children" % args.children)
    child = env.httpd.children()
    clients = [Client(k, env, args.rate) for k in range(args.clients)]
    tasks = [asyncio.ensure_future(c.run()) for c in clients]
    stats = {"kills": 0, "killed_pids": set(), "kill_times": [],
             "unread": [], "after_fin": [], "drains": 0}
    t0 = time.monotonic()
    print("soak: %d clients, %d backends, %d children, %d s, a kill every "
          "%.2f s, a drain every %.2f s (driver %s)" % (
              args.clients, args.backends, args.children, args.duration,
              args.kill_every, args.drain_every, wsp_env.DRIVER), flush=True)
    await asyncio.gather(chaos(env, backends, args, stats),
                         drainer(env, backends, args, stats))
    for c in clients:
        c.stop = True
    await asyncio.gather(*tasks)
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
    for c in clients:
        await c.close()
    return clients, stats, child, elapsed


def report(args, env, clients, stats, child, elapsed):
    receipts = backend_receipts(env.backends)
    missing = {c.k: [s for s in range(c.sent) if s not in c.got]
               for c in clients}
    in_socket = set(stats["unread"])
    after_fin = set(stats["after_fin"])
    in_flight = []
    unread = []
    late = []
    unexplained = []
    for c in clients:
        for seq in missing[c.k]:
            pids = receipts.get((c.k, seq), set())
            if pids & stats["killed_pids"]:
                in_flight.append((c.k, seq))
            elif (c.k, seq) in in_socket:
                unread.append((c.k, seq))
            elif (c.k, seq) in after_fin:
                late.append((c.k, seq))
            else:
                unexplained.append((c, seq, pids))
    log = env.httpd.log_text() if env.httpd else ""
    failovers = len(re.findall(r"backend interrupted", log))
    moves = len(re.findall(r"moved off draining backend", log))
    crashes = [l for l in log.splitlines() if CRASH_RE.search(l)]
    kids = stats["children_end"]
    if child and kids and kids != child:
        crashes.append("child replaced: %r -> %r" % (child, kids))
    dropped = [(c.k, c.dropped) for c in clients if c.dropped]
    sent = sum(c.sent for c in clients)
    out = {
        "duration_s": round(elapsed, 1),
        "clients": len(clients),
        "backends": args.backends,
        "kills": stats["kills"],
        "drains": stats["drains"],
        "moves": moves,
        "failovers": failovers,
        "messages_sent": sent,
        "messages_echoed": sum(len(c.got) for c in clients),
        "lost_in_flight": len(in_flight),
        "lost_unread_at_kill": len(unread),
        "lost_written_after_fin": len(late),
        "lost_unexplained": len(unexplained),
        "duplicates": sum(c.duplicates for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "child_crashes": len(crashes),
        "connections_dropped": len(dropped),
    }
    print("\nsoak report")
    for k, v in out.items():
        print("  %-20s %s" % (k, v))
    for k, why in dropped[:10]:
        print("  dropped: client %d: %s" % (k, why))
    for l in crashes[:10]:
        print("  crash: %s" % l)
    for c, seq, pids in unexplained[:20]:
        t = c.sent_at.get(seq, 0)
        near = [("%+.3f s" % (kt - t), name) for kt, name in
                stats["kill_times"] if -1 < kt - t < 5]
        print("  lost: client %d %s seq %d sent %s (logged by %s), kills "
              "near it: %s" % (c.k, c.id, seq, time.strftime(
                  "%H:%M:%S", time.localtime(c.sent_wall[seq]))
                  + ".%06d" % (c.sent_wall[seq] % 1 * 1e6),
                  sorted(pids) or "no backend", near[:3]))
    Path("build").mkdir(exist_ok=True)
    with open("build/soak.json", "w") as f:
        json.dump(out, f, indent=1)
    bad = out["duplicates"] or out["out_of_order"] or out["child_crashes"] \
        or out["connections_dropped"] or out["lost_unexplained"]
    print("soak %s (figures in build/soak.json)"
          % ("FAILED" if bad else "passed"))
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20,
                    help="messages per second per client")
    ap.add_argument("--kill-every", type=float, default=0.3)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--drain-every", type=float, default=2.0)
    ap.add_argument("--driver", choices=sorted(wsp_env.DRIVER_CONF),
                    default=wsp_env.DRIVER)
    ap.add_argument("--keep", action="store_true",
                    help="keep the server root (logs) afterwards")
    args = ap.parse_args()
    if args.backends < 2:
        ap.error("--backends must be at least 2")
    wsp_env.DRIVER = args.driver
    root = Path(tempfile.mkdtemp(prefix="wsp-soak-"))
    os.chmod(root, 0o755)
    env = Env(root / "root")
    rc = 1
    try:
        clients, stats, child, elapsed = asyncio.run(soak(args, env))
        env.shutdown()
        rc = report(args, env, clients, stats, child, elapsed)
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
