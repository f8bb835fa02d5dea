"""Helpers for the abuse suite (test_abuse.py): what httpd's children
spend (RSS, VmData, CPU seconds, open descriptors, from /proc), a sampler
that keeps the peak and cuts an abuse short before it can exhaust the
machine, raw abusive clients, the well-behaved probe pipe, the
t/abuse_backend.py processes, and the figures each test records in
build/abuse.json.

Only 127.0.0.1 is ever a target."""

import hashlib
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import wsp_env
import wsp_sanitize
from wsp_env import (DRIVER, HOST, MODDIR, PYTHON, REPO, Backend, RawWS,
                     build_frame, close_payload, wait_until)

MB = 1024 * 1024
KB = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Under ASan (make test SANITIZE=1) resident and mapped sizes hold
# redzones and a quarantine of freed blocks: the memory bounds say nothing
# about the module there. They are measured and printed, and not asserted
# (the same rule as wsp_hostile.MEMORY_CHECKED).
MEMORY_CHECKED = not wsp_sanitize.ENABLED

# An abuse is cut short (its socket reset, its backend killed) once the
# children have grown by this much: far past every bound the tests assert,
# and the machine is shared. A test that trips it has failed already; the
# figure it records is then a lower bound ("tripped": true).
SAFETY = int(os.environ.get("WSP_ABUSE_SAFETY_MB", "512")) * MB

ABUSE_BACKEND = REPO / "t" / "abuse_backend.py"
# where the figures go; one section per driver and module built, since
# several runs (of this worktree's build, of another one's through
# WSP_MODULE) may share the file
RESULTS = Path(os.environ.get("WSP_ABUSE_RESULTS",
                              REPO / "build" / "abuse.json"))
MODULE_PATH = os.environ.get("WSP_MODULE",
                             str(REPO / ".libs" / "mod_ws_persist.so"))

STATUS = """\
LoadModule status_module {moddir}/mod_status.so
<Location "/server-status">
    SetHandler server-status
</Location>
""".format(moddir=MODDIR)


# --------------------------------------------------------------------------
# What httpd's children spend


def children(env):
    return env.httpd.children()


def _status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss(env):
    """Sum of the children's VmRSS, in bytes."""
    return sum(_status_kb(p, "VmRSS") for p in children(env)) * KB


def vmdata(env):
    """Sum of the children's VmData (private writable mappings: heap,
    malloc's mmaps, thread stacks), in bytes. Unlike RSS it grows when
    memory is allocated, touched or not: what a claimed length costs."""
    return sum(_status_kb(p, "VmData") for p in children(env)) * KB


def cpu(env):
    """Sum of the children's utime + stime, all threads, in seconds."""
    total = 0
    for pid in children(env):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def fds(env):
    """Open descriptors of the children."""
    n = 0
    for pid in children(env):
        try:
            n += len(os.listdir("/proc/%d/fd" % pid))
        except OSError:
            pass
    return n


def settled_fds(env, samples=6, interval=0.1):
    """The children's descriptors at rest: the fewest over a moment (a
    connection just closed may linger for an instant)."""
    n = None
    for i in range(samples):
        if i:
            time.sleep(interval)
        if children(env):    # a sample that found no child says nothing
            k = fds(env)
            n = k if n is None else min(n, k)
    return n or 0


def fd_targets(env):
    """What the children's descriptors point to: {"pid/fd": target}."""
    out = {}
    for pid in children(env):
        try:
            names = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in names:
            try:
                out["%d/%s" % (pid, fd)] = os.readlink(
                    "/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                pass
    return out


def fd_extra(before, after):
    """Descriptors in after that were not in before, as "fd -> target"."""
    return sorted("%s -> %s" % (k, v) for k, v in after.items()
                  if before.get(k) != v)


class Sampler:
    """Samples the children's RSS and VmData every 50 ms from start() to
    stop() and keeps the peak growth over the values at start(). Past
    SAFETY it sets tripped and calls every on_trip callback once."""

    def __init__(self, env, interval=0.05, safety=SAFETY):
        self.env = env
        self.interval = interval
        self.safety = safety
        self.tripped = threading.Event()
        self.on_trip = []
        self.base_rss = self.base_data = 0
        self.peak_rss = self.peak_data = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.base_rss = self.peak_rss = rss(self.env)
        self.base_data = self.peak_data = vmdata(self.env)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def sample(self):
        r, d = rss(self.env), vmdata(self.env)
        self.peak_rss = max(self.peak_rss, r)
        self.peak_data = max(self.peak_data, d)
        if not self.tripped.is_set() and (
                r - self.base_rss > self.safety
                or d - self.base_data > 2 * self.safety):
            self.tripped.set()
            for cb in self.on_trip:
                try:
                    cb()
                except Exception:   # noqa: BLE001 - a safety valve
                    pass

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.sample()

    @property
    def rss_growth(self):
        return self.peak_rss - self.base_rss

    @property
    def data_growth(self):
        return self.peak_data - self.base_data


def mb(n):
    return round(n / MB, 2)


class CpuWindow:
    """CPU seconds the children spend between begin() and end()."""

    def __init__(self, env):
        self.env = env
        self.t0 = self.c0 = None
        self.seconds = self.wall = None

    def begin(self):
        self.t0, self.c0 = time.monotonic(), cpu(self.env)
        return self

    def end(self):
        self.seconds = round(cpu(self.env) - self.c0, 3)
        self.wall = round(time.monotonic() - self.t0, 2)
        return self.seconds


# --------------------------------------------------------------------------
# mod_status: the pipes of the child


def status_pipes(env):
    """WSPersistProcessPipes of ?auto (pipes holding a backend in the
    child that answered: the only child here)."""
    conn = http.client.HTTPConnection(HOST, env.httpd.port, timeout=30)
    try:
        # the server closes it at once: no keep-alive connection of ours
        # is counted among the children's descriptors afterwards
        conn.request("GET", "/server-status?auto",
                     headers={"Connection": "close"})
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
    finally:
        conn.close()
    for line in body.splitlines():
        if line.startswith("WSPersistProcessPipes: "):
            return int(line.split(": ", 1)[1])
    raise AssertionError("no WSPersistProcessPipes line:\n" + body)


# --------------------------------------------------------------------------
# Raw clients


def parse_frames(buf):
    """Whole server frames at the start of buf: ([(fin, op, payload)],
    rest)."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if b1 & 0x80:
            off += 4
        if len(buf) < off + n:
            break
        out.append((bool(b0 & 0x80), b0 & 0x0F, bytes(buf[off:off + n])))
        buf = buf[off + n:]
    return out, buf


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def mask_fixed(payload, key=b"\x37\xfa\x21\x3d"):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big")
            ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""


def frame(opcode, payload=b"", fin=True, key=b"\x37\xfa\x21\x3d"):
    """A masked client frame with a fixed key (fast to repeat)."""
    return build_frame(opcode, payload, fin=fin, key=key)


class Raw(RawWS):
    """RawWS with an optional small receive buffer (set before connect, so
    the kernel does not grow it: a client that never reads is full in a
    few KB) and a TCP reset."""

    def __init__(self, port, path, timeout=20, rcvbuf=None):
        self.port = port
        self.path = path
        self.timeout = timeout
        self.buf = b""
        self.response = None
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((HOST, port))
        self.sock = s

    def reset(self):
        """Close with a RST (no FIN): SO_LINGER 0."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def tcp_state(self):
        """The kernel's TCP state of this end (1 established, 8 close-wait:
        the peer sent its FIN, 7 closed)."""
        try:
            return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                        8)[0]
        except OSError:
            return 7


def raw_client(env, path, rcvbuf=None, timeout=20):
    ws = Raw(env.httpd.port, path, timeout=timeout, rcvbuf=rcvbuf)
    r = ws.handshake()
    assert r.status == 101, "handshake of %s: %r" % (path, r)
    return ws


class Flooder:
    """An abusive client's traffic: a thread sends chunk after chunk (a
    callable returning bytes, or bytes) until stop(), the deadline, or the
    proxy closes; a second thread, if read=True, reads and keeps the
    frames the proxy sends (a close among them). The timeline of bytes
    sent says whether the proxy stopped reading."""

    def __init__(self, ws, chunk, read=False, duration=6.0, first=b""):
        self.ws = ws
        self.chunk = chunk
        self.read = read
        self.duration = duration
        self.first = first
        self.sent = 0
        self.timeline = []             # (monotonic, bytes sent)
        self.error = None              # what ended the sending
        self.frames = []               # (fin, op, payload) received
        self.close = None              # close code received
        self.close_payload = None
        self.close_t = None
        self.messages = []             # (opcode, payload) whole messages
        self.eof = False
        self.eof_t = None
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        self.ws.sock.settimeout(0.2)
        self.t0 = time.monotonic()
        self.timeline.append((self.t0, 0))
        t = threading.Thread(target=self._send, daemon=True)
        self._threads.append(t)
        if self.read:
            r = threading.Thread(target=self._recv, daemon=True)
            self._threads.append(r)
        for t in self._threads:
            t.start()
        return self

    def _next(self):
        return self.chunk() if callable(self.chunk) else self.chunk

    def _send(self):
        deadline = self.t0 + self.duration
        last = self.t0
        data = memoryview(self.first) if self.first else None
        while not self._stop.is_set() and time.monotonic() < deadline:
            if data is None or not len(data):
                if self.chunk is None:
                    break
                data = memoryview(self._next())
            try:
                n = self.ws.sock.send(data[:1 << 20])
                data = data[n:]
                self.sent += n
            except socket.timeout:
                pass
            except OSError as e:
                self.error = "%s" % e
                break
            now = time.monotonic()
            if now - last >= 0.05:
                last = now
                self.timeline.append((now, self.sent))
        self.timeline.append((time.monotonic(), self.sent))

    def _recv(self):
        buf = self.ws.buf
        self.ws.buf = b""
        op, parts = None, []
        while not self._stop.is_set():
            frames, buf = parse_frames(buf)
            for f in frames:
                if len(self.frames) < 1000:
                    self.frames.append(f)
                if f[1] == 0x8 and self.close is None:
                    self.close = close_code(f[2])
                    self.close_payload = f[2]
                    self.close_t = time.monotonic()
                elif f[1] in (0x0, 0x1, 0x2):
                    if f[1]:
                        op, parts = f[1], []
                    parts.append(f[2])
                    if f[0]:
                        self.messages.append((op, b"".join(parts)))
                        parts = []
            try:
                chunk = self.ws.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as e:
                self.eof = "reset: %s" % e
                self.eof_t = time.monotonic()
                return
            if not chunk:
                self.eof = True
                self.eof_t = time.monotonic()
                return
            buf += chunk

    def sent_between(self, t0, t1):
        """Bytes sent between two monotonic times (from the timeline)."""
        def at(t):
            v = 0
            for ts, b in self.timeline:
                if ts <= t:
                    v = b
            return v
        return at(t1) - at(t0)

    def wait(self, timeout=None):
        """Until the sender is done (deadline, stop, or closed)."""
        self._threads[0].join(timeout)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def wait_close(self, timeout):
        """Until a close frame or EOF came (read=True)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.close is not None or self.eof:
                return True
            time.sleep(0.02)
        return False


# --------------------------------------------------------------------------
# The well-behaved pipe


class Probe:
    """A polite client on its own pipe (same child and, with
    WSPersistEventLoopThreads 1, the same loop thread as the abuser): a
    numbered text message every interval, each echo checked; pings
    answered. stop() waits for the echoes still due and returns its
    figures: sent, received, in order, the longest any echo waited (the
    ones never received count until stop), the longest pause between two
    echoes while it was sending."""

    def __init__(self, env, location="/ws/", interval=0.02, client_id=None):
        from wsp_env import new_id
        self.env = env
        self.path = location + (client_id or new_id())
        self.interval = interval
        self.sent_at = {}
        self.got = []                  # (n, monotonic)
        self.other = []                # frames that were not an echo
        self.closed = None
        self._stop = threading.Event()
        self._sending = threading.Event()
        self._thread = None
        self.ws = None

    def start(self):
        self.ws = raw_client(self.env, self.path)
        self.ws.sock.settimeout(0.5)
        buf = self.ws.buf
        self.ws.buf = b""
        self._buf = buf
        self._sending.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # the pipe works before the abuse starts
        wait_until(lambda: len(self.got) >= 5 or self.closed, 20,
                   what="the probe's first echoes")
        assert not self.closed, "the probe was closed: %r" % (self.closed,)
        return self

    def _run(self):
        sock = self.ws.sock
        n = 0
        nxt = time.monotonic()
        buf = self._buf
        while not self._stop.is_set():
            now = time.monotonic()
            if self._sending.is_set() and now >= nxt:
                payload = ("probe %d" % n).encode()
                try:
                    sock.sendall(frame(0x1, payload))
                except OSError as e:
                    self.closed = "send: %s" % e
                    return
                self.sent_at[n] = now
                n += 1
                nxt = max(nxt + self.interval, now)
            wait = max(0.0, min(nxt - time.monotonic(), 0.05)) \
                if self._sending.is_set() else 0.05
            try:
                r, _, _ = select.select([sock], [], [], wait)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                self.closed = "recv: %s" % e
                return
            if not chunk:
                self.closed = "EOF"
                return
            buf += chunk
            frames, buf = parse_frames(buf)
            t = time.monotonic()
            for fin, op, payload in frames:
                if op == 0x1 and payload.startswith(b"probe "):
                    self.got.append((int(payload[6:]), t))
                elif op == 0x9:
                    try:
                        sock.sendall(frame(0xA, payload))
                    except OSError:
                        pass
                elif op == 0x8:
                    self.closed = "close %d" % close_code(payload)
                    return
                else:
                    self.other.append((op, payload[:40]))

    def stop(self, drain=8.0):
        """Stop sending, wait up to drain seconds for what is due, close;
        the figures."""
        self._sending.clear()
        t_stop = time.monotonic()
        deadline = t_stop + drain
        while time.monotonic() < deadline and not self.closed \
                and len(self.got) < len(self.sent_at):
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(5)
        self.ws.close()
        return self.figures(t_stop)

    def figures(self, t_stop):
        nums = [n for n, _ in self.got]
        recv_at = dict(self.got)
        end = time.monotonic()
        waits = [(recv_at[n] if n in recv_at else end) - t
                 for n, t in self.sent_at.items()]
        times = [t for _, t in self.got if t <= t_stop]
        gaps = [b - a for a, b in zip(times, times[1:])]
        return {
            "sent": len(self.sent_at),
            "received": len(nums),
            "in_order": nums == sorted(set(nums)),
            "missing": len(set(self.sent_at) - set(nums)),
            "max_wait_s": round(max(waits), 3) if waits else None,
            "max_gap_s": round(max(gaps), 3) if gaps else None,
            "closed": self.closed,
            "other_frames": len(self.other),
        }


# The probe's bound: every echo back, in order, and none waits longer than
# this. Generous (an echo takes about a millisecond on loopback): a loop
# thread blocked for the configured Timeout (5 s) shows, scheduling on a
# busy 2-core machine does not.
PROBE_MAX_WAIT = 2.0


def probe_problems(fig):
    out = []
    if fig["closed"]:
        out.append("the probe pipe was closed: %s" % fig["closed"])
    if fig["received"] != fig["sent"]:
        out.append("the probe got %d of %d echoes"
                   % (fig["received"], fig["sent"]))
    if not fig["in_order"]:
        out.append("the probe's echoes came out of order or twice")
    if fig["max_wait_s"] is not None and fig["max_wait_s"] > PROBE_MAX_WAIT:
        out.append("a probe echo waited %.2f s (bound %.1f s): another "
                   "pipe stalled it" % (fig["max_wait_s"], PROBE_MAX_WAIT))
    if fig["other_frames"]:
        out.append("the probe got %d frames it never asked for"
                   % fig["other_frames"])
    return out


# --------------------------------------------------------------------------
# t/abuse_backend.py processes


class AbuseBackend(Backend):
    """One t/abuse_backend.py in a given mode, managed like t/backend.py
    (start, kill, events)."""

    def __init__(self, env, name, port, mode, delay_ms=None, quiet=False):
        super().__init__(env, name, port)
        self.mode = mode
        self.delay_ms = delay_ms
        self.quiet = quiet

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [PYTHON, str(ABUSE_BACKEND), "--port", str(self.port),
               "--mode", self.mode, "--name", self.name,
               "--log", str(self.log_path)]
        if self.delay_ms is not None:
            cmd += ["--delay-ms", str(self.delay_ms)]
        if self.quiet:
            cmd.append("--quiet")
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def connections(self):
        return self.events("conn")

    def open_connections(self):
        """Connections the proxy opened and has not closed."""
        ev = self.events()
        return (sum(1 for e in ev if e["ev"] == "conn")
                - sum(1 for e in ev if e["ev"] == "eof"))

    def sent(self):
        """The last "sent" event of a flood: (monotonic time, bytes)."""
        ev = self.events("sent")
        return (ev[-1]["t"], ev[-1]["bytes"]) if ev else (None, 0)

    def sent_between(self, t0, t1):
        def at(t):
            v = 0
            for e in self.events("sent"):
                if e["t"] <= t:
                    v = max(v, e["bytes"])
            return v
        return at(t1) - at(t0)


def abuse_backend(env, name, mode, start=True, **kw):
    be = AbuseBackend(env, name, env.port(), mode, **kw)
    env.backends.append(be)
    if start:
        be.start()
    return be


# --------------------------------------------------------------------------
# Figures


def module_sha1():
    """Of the module this run loaded (the session's snapshot of it)."""
    try:
        with open(wsp_env.MODULE, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()[:12]
    except OSError:
        return None


def save(name, fig):
    """Merge one test's figures into RESULTS (build/abuse.json) under
    "<driver> <module path>", with the module's sha1 and the time."""
    fig["module_sha1"] = module_sha1()
    fig["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lock = RESULTS.with_suffix(".lock")
    with open(lock, "w") as lf:
        import fcntl
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            data = json.loads(RESULTS.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("%s %s" % (DRIVER, MODULE_PATH), {})[name] = fig
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, RESULTS)


class Checks:
    """Failures gathered, so that every figure is measured and recorded
    before the test fails; fail() raises with all of them."""

    def __init__(self, fig):
        self.fig = fig
        self.problems = []

    def check(self, ok, msg):
        if not ok:
            self.problems.append(msg)
        return ok

    def memory(self, what, grown, bound):
        """A memory bound, asserted unless under ASan (then said so)."""
        if not MEMORY_CHECKED:
            self.fig.setdefault("notes", []).append(
                "%s bound not asserted under ASan" % what)
            return True
        return self.check(grown < bound, "%s grew by %.1f MB (bound %.0f "
                          "MB)" % (what, grown / MB, bound / MB))

    def done(self):
        self.fig["problems"] = list(self.problems)
        if self.problems:
            raise AssertionError("\n".join(self.problems))


# --------------------------------------------------------------------------
# Many short sessions, fast: one thread, non-blocking sockets, the frames
# pipelined behind the upgrade request


SESSION_KINDS = (
    "echo-close",       # a message and a close with the request; the echo
                        # and the close reply read; FIN
    "close",            # a close with the request; its reply read; FIN
    "reset-after-101",  # a message with the request; the 101 read; RST
    "no-close",         # a message; its echo read; FIN without a close
    "reset-early",      # the request only, RST at once (no answer read)
    "echo-reset",       # a message; its echo read; RST
)
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def run_sessions(port, count, concurrency=48, location="/ws/",
                 timeout=15, first=0, budget=None, give_up=None):
    """count sessions of the kinds above in turn (starting at kind
    first % 6), concurrency at a time; a Counter of how they ended:
    "ok <kind>" or what went wrong. No session starts after budget
    seconds, nor once give_up() says so (checked twice a second): the
    rest count as "not started (...)"."""
    import collections
    import selectors
    import uuid
    sel = selectors.DefaultSelector()
    stats = collections.Counter()
    text = frame(0x1, b"x")
    closef = frame(0x8, close_payload(1000))
    rst = struct.pack("ii", 1, 0)
    state = {"started": 0, "done": 0}
    # a reset before any answer frees the client at once while the
    # server still works on it: its slot is held a while longer, so that
    # the server sees at most about concurrency sessions at a time
    cooling = []

    def begin():
        kind = SESSION_KINDS[(first + state["started"])
                             % len(SESSION_KINDS)]
        state["started"] += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((HOST, port))
        req = ("GET %s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n"
               % (location, uuid.uuid4(), HOST, _KEY)).encode()
        if kind in ("echo-close", "reset-after-101", "no-close",
                    "echo-reset"):
            req += text
        if kind in ("echo-close", "close"):
            req += closef
        st = {"kind": kind, "out": req, "buf": b"", "head": None,
              "echo": False, "deadline": time.monotonic() + timeout}
        sel.register(s, selectors.EVENT_WRITE, st)

    def finish(s, st, outcome, reset=False, hold=0.0):
        stats[outcome] += 1
        if hold:
            cooling.append(time.monotonic() + hold)
        else:
            state["done"] += 1
        sel.unregister(s)
        if reset:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
            except OSError:
                pass
        s.close()

    def readable(s, st):
        try:
            chunk = s.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            finish(s, st, "error %s in %s" % (e.__class__.__name__,
                                              st["kind"]))
            return
        if not chunk:
            finish(s, st, "EOF before the end of %s" % st["kind"])
            return
        st["buf"] += chunk
        if st["head"] is None:
            if b"\r\n\r\n" not in st["buf"]:
                return
            head, st["buf"] = st["buf"].split(b"\r\n\r\n", 1)
            st["head"] = head
            status = head.split(b" ", 2)[1]
            if status != b"101":
                finish(s, st, "status %s" % status.decode())
                return
            if st["kind"] == "reset-after-101":
                finish(s, st, "ok reset-after-101", reset=True)
                return
        frames, st["buf"] = parse_frames(st["buf"])
        for fin, op, payload in frames:
            if op == 0x1 and payload == b"x":
                st["echo"] = True
            elif op == 0x8:
                kind = st["kind"]
                if kind == "close" or (kind == "echo-close" and st["echo"]):
                    finish(s, st, "ok " + kind)
                else:
                    finish(s, st, "close %d in %s"
                           % (close_code(payload), kind))
                return
        if st["echo"] and st["kind"] in ("no-close", "echo-reset"):
            finish(s, st, "ok " + st["kind"],
                   reset=st["kind"] == "echo-reset")

    def writable(s, st):
        try:
            n = s.send(st["out"])
        except BlockingIOError:
            return
        except OSError as e:
            finish(s, st, "connect/send %s" % e.__class__.__name__)
            return
        st["out"] = st["out"][n:]
        if st["out"]:
            return
        if st["kind"] == "reset-early":
            finish(s, st, "ok reset-early", reset=True, hold=0.1)
            return
        sel.modify(s, selectors.EVENT_READ, st)

    last_sweep = time.monotonic()
    stop_at = last_sweep + budget if budget else None
    why = None
    while state["done"] < count:
        if why and count > state["started"]:
            stats["not started (%s)" % why] += count - state["started"]
            count = state["started"]
            continue
        while (state["started"] < count
               and state["started"] - state["done"] < concurrency):
            begin()
        for key, ev in sel.select(0.05 if cooling else 0.2):
            s, st = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE:
                writable(s, st)
            elif ev & selectors.EVENT_READ:
                readable(s, st)
        now = time.monotonic()
        while cooling and cooling[0] <= now:
            cooling.pop(0)
            state["done"] += 1
        if now - last_sweep > 0.5:
            last_sweep = now
            if stop_at and now > stop_at:
                why = "time budget"
            elif give_up:
                why = give_up()
            for key in list(sel.get_map().values()):
                if key.data["deadline"] < now:
                    finish(key.fileobj, key.data,
                           "timeout in %s" % key.data["kind"])
    sel.close()
    return stats


__all__ = ["MB", "KB", "STATUS", "Sampler", "CpuWindow", "Flooder", "Probe",
           "Raw", "raw_client", "abuse_backend", "status_pipes", "rss",
           "vmdata", "cpu", "fds", "frame", "close_payload", "save",
           "Checks", "probe_problems", "mb", "parse_frames", "close_code",
           "MEMORY_CHECKED", "run_sessions", "SESSION_KINDS", "fd_targets",
           "fd_extra", "settled_fds"]
