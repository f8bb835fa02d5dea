"""Test environment for mod_ws_persist's integration suite.

Each test gets an Env rooted in its own temporary folder: a generated
httpd.conf that loads the freshly built module, the real /usr/sbin/apache2
in the foreground on a free loopback port, and t/backend.py echo backends
that a test starts, SIGKILLs and restarts. Everything listens on 127.0.0.1.

Clients: websockets' legacy asyncio client (connect(), whoami(), ...) for
well-behaved traffic, RawWS and http_request() for hand-built handshakes and
frames.
"""

import asyncio
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import websockets

import wsp_sanitize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsp_user import run_user  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# WSP_MODULE: run the suite against another build (an installed module,
# a mutated copy that should make tests fail)
MODULE = Path(os.environ.get("WSP_MODULE",
                             REPO / ".libs" / "mod_ws_persist.so"))
BACKEND = REPO / "t" / "backend.py"
# WSP_DRIVER: which pipe driver the suite runs under. "event" (the default
# under the event MPM): pipes suspended to the child's loop thread;
# "thread": each pipe holds its request's worker thread.
DRIVER = os.environ.get("WSP_DRIVER", "event")
DRIVER_CONF = {"event": "WSPersistEventLoop On",
               "thread": "WSPersistEventLoop Off"}
PYTHON = "/usr/bin/python3"
APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"
HOST = "127.0.0.1"

# error log: "[date] [module:level] [pid N:tid N] ..."
LOG_LEVEL_RE = re.compile(r"^\[[^\]]*\] \[([^:\]]*):(\w+)\]")
BAD_LEVELS = {"error", "crit", "alert", "emerg"}
# the level most of the pipe's faults are logged at (failovers, failed
# connects and handshakes): a ws_persist line at it must be expected too
WARN_LEVEL = "warn"
MODULE_TAG = "ws_persist"
CRASH_RE = re.compile(r"child pid \d+ exit signal")
# how long a graceful stop may wait for live connections
GRACEFUL_S = 10


def new_id():
    return str(uuidlib.uuid4())


def hget(headers, name, default=None):
    """Case-insensitive header lookup in a dict."""
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return default


def wait_until(pred, timeout=15.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def interruptions(env, cid=None):
    """How many times the proxy has logged cid's backend (any pipe's:
    None) interrupted: its own word that it saw a kill."""
    return len(env.httpd.log_lines(
        r"ws_persist: client %s .* backend interrupted " % (
            re.escape(cid) if cid else r"\S+")))


async def await_until(pred, timeout=15.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s"
                                 % (timeout, what))
        await asyncio.sleep(interval)


def port_open(port, host=HOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# What a killed backend had taken, and what it had not yet read
#
# DESIGN 3 allows a message to be lost only when it was completely written
# to a backend that then failed. A test proves that of each message it
# misses: the backend logged it whole and not its echo (t/backend.py's rx
# and echoed events), or it is found whole in the dead backend's socket
# (written, never read: Backend.kill_keeping_sockets).

LIBC = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438                       # x86_64 and most others
EPOLL_WAITS = {"232", "281", "441"}         # epoll_wait, _pwait, _pwait2


def freeze_idle(pid, tries=500):
    """SIGSTOP pid while it waits in epoll_wait, between callbacks: then
    everything it read from its sockets is logged, and what it has not
    read is still in them. Stopped elsewhere, it is let go and tried again
    a moment later."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        for _ in range(1000):
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.0002)
        with open("/proc/%d/syscall" % pid) as f:
            if f.read().split()[0] in EPOLL_WAITS:
                return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError("backend %d never stopped while idle" % pid)


def socket_copies(pid):
    """Copies (pidfd_getfd) of the connected sockets of process pid, as
    {peer port: socket}."""
    out = {}
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
                raise AssertionError("pidfd_getfd: %s" % os.strerror(
                    ctypes.get_errno()))
            sock = socket.socket(fileno=fd)
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    raise OSError("not TCP")  # asyncio's self-pipe
                out[sock.getpeername()[1]] = sock
            except OSError:
                sock.close()                # the listener
    finally:
        os.close(pidfd)
    return out


def read_available(sock):
    data = b""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except (BlockingIOError, ConnectionError):
        pass
    return data


class Remains:
    """The sockets of a SIGKILLed backend, kept open by copies: what the
    proxy wrote into them that the process never read. At the kill a
    socket with unread data is reset, as the kernel does; the others get
    a FIN, and are read on until the proxy closes them (what it wrote
    after the FIN had arrived is completely written to a dead backend
    too)."""

    def __init__(self, socks, killed=True):
        """killed=False: the process lives on (it just never read); the
        sockets are read until the proxy closes them, and never reset."""
        self.data = {}                       # peer port: bytes
        self.open = {}
        for port, sock in socks.items():
            data = read_available(sock)
            if data and killed:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
                data += read_available(sock)
                sock.close()
            else:
                if killed:
                    sock.shutdown(socket.SHUT_WR)
                self.open[port] = sock
            self.data[port] = data

    def collect(self, timeout=30):
        """Read the FIN'd sockets until the proxy has closed each; the
        bytes each socket held, by peer port."""
        deadline = time.monotonic() + timeout
        for port, sock in list(self.open.items()):
            sock.setblocking(True)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "the proxy kept a dead backend's connection open "
                        "for %ds" % timeout)
                sock.settimeout(left)
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionError:
                    chunk = b""
                except socket.timeout:
                    continue
                if not chunk:
                    break
                self.data[port] += chunk
            sock.close()
            del self.open[port]
        return self.data


def client_messages(data, under_way=None):
    """The data messages in a stream of client-to-server (masked) frames:
    ([heads of whole messages], head of an incomplete one or None). A
    stream that starts inside a message (under_way: its head) ends it
    with continuation frames. Heads: latin-1 of the first 256 bytes."""
    whole, i, cur = [], 0, under_way
    while True:
        if len(data) - i < 2:
            break
        b0, b1 = data[i], data[i + 1]
        n, off = b1 & 0x7F, i + 2
        if n == 126:
            if len(data) < off + 2:
                break
            n, off = struct.unpack("!H", data[off:off + 2])[0], off + 2
        elif n == 127:
            if len(data) < off + 8:
                break
            n, off = struct.unpack("!Q", data[off:off + 8])[0], off + 8
        key = data[off:off + 4] if b1 & 0x80 else b"\0\0\0\0"
        off += 4 if b1 & 0x80 else 0
        op = b0 & 0x0F
        if op in (1, 2):
            head = bytes(c ^ key[k % 4] for k, c in
                         enumerate(data[off:off + min(n, 256)]))
            cur = head.decode("latin-1")
        if len(data) < off + n:
            break
        if op in (0, 1, 2) and cur is not None and b0 & 0x80:
            whole.append(cur)
            cur = None
        i = off + n
    return whole, cur


# --------------------------------------------------------------------------
# Backends


class Backend:
    """One t/backend.py process on a fixed port; restartable on that port."""

    def __init__(self, env, name, port, subprotocols=None, args=()):
        self.env = env
        self.name = name
        self.port = port
        self.subprotocols = subprotocols
        self.args = list(args)
        self.log_path = env.root / ("backend-%s.jsonl" % name)
        self.out_path = env.root / ("backend-%s.out" % name)
        self.proc = None

    @property
    def url(self):
        return "ws://%s:%d/echo/" % (HOST, self.port)

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [PYTHON, str(BACKEND), "--port", str(self.port),
               "--name", self.name, "--log", str(self.log_path)]
        if self.subprotocols:
            cmd += ["--subprotocols", ",".join(self.subprotocols)]
        cmd += self.args
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("backend %s exited with %s:\n%s" % (
                self.name, self.proc.returncode, self.output()))
        return any(e["ev"] == "ready" and e["pid"] == self.proc.pid
                   for e in self.events())

    def start(self, timeout=20):
        self._spawn()
        wait_until(self._ready, timeout, what="backend %s ready" % self.name)
        return self

    async def astart(self, timeout=20):
        """start() without blocking the event loop of a running test."""
        self._spawn()
        await await_until(self._ready, timeout,
                          what="backend %s ready" % self.name)
        return self

    def kill(self):
        """SIGKILL, and wait until the process (and its sockets) are gone."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill_keeping_sockets(self):
        """SIGKILL the backend once it is idle (everything it read is
        logged), keeping copies of its connections' sockets: a Remains of
        what the proxy wrote into them that the process never read."""
        assert self.alive
        self.killed_pid = self.proc.pid
        freeze_idle(self.proc.pid)
        socks = socket_copies(self.proc.pid)
        self.kill()
        return Remains(socks)

    def lost_with(self, client_id, remains, pid=None):
        """What the client's messages to this backend's process pid (the
        one killed by default) may be lost as (DESIGN 3: completely
        written to it): (whole, partial). whole: heads of messages it
        logged whole ("rx") without their echo, then of those found whole
        in its sockets (remains.collect()). partial: heads of messages
        written to it only in part, which the next backend must get
        whole."""
        pid = pid or self.killed_pid
        data = remains.collect()
        whole, partial = [], []
        for o in self.opens(client_id):
            if o["pid"] != pid:
                continue
            evs = [e for e in self.events() if e["pid"] == pid
                   and e.get("conn") == o["conn"]]
            echoed = [e["head"] for e in evs if e["ev"] == "echoed"]
            pending = None
            for e in evs:
                if e["ev"] == "rx":
                    pending = None
                    if e["head"] in echoed:
                        echoed.remove(e["head"])
                    else:
                        whole.append(e["head"])
                elif e["ev"] == "rx-part":
                    pending = e
            stream = data.get(o["peer"], b"")
            under_way = None
            if pending is not None:
                if pending["buf"] is None:
                    raise AssertionError(
                        "backend %s: an incomplete frame of %d bytes was "
                        "not logged; cannot tell what the kill lost"
                        % (self.name, pending["have"]))
                stream = bytes.fromhex(pending["buf"]) + stream
                under_way = pending["head"] if pending["under_way"] \
                    else None
            w, part = client_messages(stream, under_way)
            whole += w
            if part is not None:
                partial.append(part)
        return whole, partial

    def pause(self):
        """SIGSTOP: the backend's connections stay open but it answers
        nothing, not even a ping."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, ev=None):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue   # a line still being written
            if ev is None or e["ev"] == ev:
                out.append(e)
        return out

    def opens(self, client_id=None):
        """Handshakes the backend accepted, optionally for one client id."""
        return [e for e in self.events("open") if client_id is None
                or hget(e["headers"], "X-WS-Persist-Client-Id") == client_id]

    def _conns(self, client_id):
        return {(e["pid"], e["conn"]) for e in self.opens(client_id)}

    def messages(self, client_id=None):
        conns = None if client_id is None else self._conns(client_id)
        return [e for e in self.events("msg")
                if conns is None or (e["pid"], e["conn"]) in conns]

    def closes(self, client_id=None):
        conns = None if client_id is None else self._conns(client_id)
        return [e for e in self.events("close")
                if conns is None or (e["pid"], e["conn"]) in conns]

    def saw(self, marker):
        """Whether any message the backend received contains marker."""
        return any(marker in e["head"] for e in self.messages())


# --------------------------------------------------------------------------
# httpd


BASE_CONF = """\
ServerRoot "{root}"
ServerName {host}
DefaultRuntimeDir "{root}/run"
PidFile "{root}/run/httpd.pid"
# The children run as an unprivileged user that cannot search pytest's
# private tmp folders: the document root and core dumps live in a folder
# of their own.
DocumentRoot "{shared}/htdocs"
CoreDumpDirectory "{shared}/cores"
<Directory />
    AllowOverride None
    Require all granted
</Directory>
{user}
LoadModule mpm_event_module {moddir}/mod_mpm_event.so
LoadModule authz_core_module {moddir}/mod_authz_core.so
{ssl_modules}
LoadModule ws_persist_module {module}
{driver}

# One child: the registry, duplicate ids and exclusive state are per child.
# Under the thread driver each live pipe holds a worker thread.
StartServers 1
ServerLimit 1
ThreadLimit 256
ThreadsPerChild 256
MaxRequestWorkers 256
MinSpareThreads 1
MaxSpareThreads 512
GracefulShutdownTimeout {graceful_s}

ErrorLog "{root}/logs/error_log"
LogLevel warn core:notice mpm_event:notice ws_persist:debug
LogFormat "%h %l %u %t \\"%r\\" %>s %b" common
CustomLog "{root}/logs/access_log" common

Listen {host}:{port}
{ssl_conf}
{body}
"""

SSL_CONF = """\
Listen {host}:{ssl_port}
<VirtualHost {host}:{ssl_port}>
    ServerName {host}
    SSLEngine on
    SSLCertificateFile "{root}/tls/cert.pem"
    SSLCertificateKeyFile "{root}/tls/key.pem"
</VirtualHost>
"""


class Httpd:
    def __init__(self, env, body, ssl=False):
        self.env = env
        self.root = env.root
        self.port = env.port()
        self.ssl_port = env.port() if ssl else None
        self.ssl = ssl
        self.conf_path = self.root / "conf" / "httpd.conf"
        self.error_log = self.root / "logs" / "error_log"
        self.out_path = self.root / "logs" / "apache2.out"
        self.proc = None
        self.problems = []
        self.write_conf(body)

    def write_conf(self, body):
        for d in ("conf", "logs", "run"):
            (self.root / d).mkdir(exist_ok=True)
        fmt = dict(root=self.root, host=HOST, port=self.port,
                   shared=self.env.shared(), graceful_s=GRACEFUL_S,
                   ssl_port=self.ssl_port, moddir=MODDIR, module=MODULE,
                   user=run_user(), driver=DRIVER_CONF[DRIVER])
        if self.ssl:
            self.env.make_cert()
            fmt["ssl_modules"] = (
                "LoadModule socache_shmcb_module %s/mod_socache_shmcb.so\n"
                "LoadModule ssl_module %s/mod_ssl.so" % (MODDIR, MODDIR))
            fmt["ssl_conf"] = SSL_CONF.format(**fmt)
        else:
            fmt["ssl_modules"] = fmt["ssl_conf"] = ""
        self.conf_path.write_text(BASE_CONF.format(body=body, **fmt))

    def configtest(self):
        """(exit status, output) of apache2 -t."""
        p = subprocess.run([APACHE, "-t", "-f", str(self.conf_path),
                            "-d", str(self.root)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=60,
                           env=wsp_sanitize.environ(self.env.shared()))
        return p.returncode, p.stdout.decode(errors="replace")

    def start(self, timeout=20):
        if not MODULE.exists():
            raise AssertionError("%s is not built (make -f Makefile.apxs)"
                                 % MODULE)
        def allow_cores():
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                      resource.RLIM_INFINITY))
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [APACHE, "-f", str(self.conf_path), "-d", str(self.root),
                 "-DFOREGROUND"],
                stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=allow_cores,
                env=wsp_sanitize.environ(self.env.shared()))
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.ssl_port] if self.ssl else [])
        while not all(port_open(p) for p in ports):
            if self.proc.poll() is not None:
                raise AssertionError("apache2 exited with %s:\n%s\n%s" % (
                    self.proc.returncode, self.output(), self.log_text()))
            if time.monotonic() > deadline:
                raise AssertionError("apache2 did not listen within %ds"
                                     % timeout)
            time.sleep(0.05)
        return self

    def children(self):
        pid = self.proc.pid
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    @staticmethod
    def _running(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    @staticmethod
    def _threads(pid):
        """gdb's backtraces of every thread of a live process."""
        try:
            p = subprocess.run(
                ["gdb", "-p", str(pid), "-batch", "-nx",
                 "-ex", "thread apply all bt"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=60)
            # threads with the same stack once, with their count
            stacks, cur = {}, None
            for l in p.stdout.decode(errors="replace").splitlines():
                if l.startswith("Thread "):
                    cur = []
                    stacks.setdefault(id(cur), cur)
                elif l.startswith("#") and cur is not None:
                    cur.append(re.sub(r"^#\d+\s+(0x[0-9a-f]+ in )?", "",
                                      l)[:160])
            groups = {}
            for st in stacks.values():
                key = tuple(re.sub(r"\(.*", "", f) for f in st)
                groups.setdefault(key, [0, st])[0] += 1
            out = ["threads of the stuck child %d:" % pid]
            for n, st in groups.values():
                out.append("%d thread(s):\n    %s" % (n, "\n    ".join(st)))
            return "\n".join(out)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "no backtrace of the stuck child %d: %s" % (pid, e)

    def stop(self, timeout=30):
        """A graceful stop, then SIGTERM once the child is gone. (An
        immediate stop is not used: httpd 2.4.71's event MPM child crashes
        in about 1 of 200 SIGTERM shutdowns with or without this module,
        and a crash must mean something in this suite.)"""
        if self.proc is None or self.proc.poll() is not None:
            return
        kids = self.children()
        self.proc.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + GRACEFUL_S + 5
        # before httpd's GracefulShutdownTimeout SIGKILLs a stuck child,
        # what each of its threads is doing
        dump_at = time.monotonic() + GRACEFUL_S - 3
        while any(self._running(k) for k in kids):
            if dump_at and time.monotonic() > dump_at:
                dump_at = None
                self.problems += [self._threads(k) for k in kids
                                  if self._running(k)]
            if time.monotonic() > deadline:
                self.problems.append(
                    "apache2's child did not exit within %ds of a graceful "
                    "stop (a pipe that never ended?)" % (GRACEFUL_S + 5))
                break
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.problems.append("apache2 did not stop within %ds of SIGTERM"
                                 % timeout)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:   # a child the parent left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def output(self):
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self):
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern=None):
        rx = re.compile(pattern) if pattern else None
        return [l for l in self.log_text().splitlines()
                if rx is None or rx.search(l)]

    def url(self, path, scheme="ws"):
        port = self.ssl_port if scheme in ("wss", "https") else self.port
        return "%s://%s:%d%s" % (scheme, HOST, port, path)


# --------------------------------------------------------------------------
# The environment of one test


# why a killed backend's pipe fails over: its FIN or its reset is read,
# or a write to it fails
KILLED = r"connection closed|read failed|write failed"


def _url_rx(backend):
    if backend is None:
        return r"\S+"
    return re.escape(backend if isinstance(backend, str) else backend.url)


class Env:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.ports = set()
        self.backends = []
        self.httpd = None
        self.expected_errors = []
        self.expected_warns = []
        self.expected_kills = set()    # child pids a test SIGKILLs
        self._shared = None

    def shared(self):
        """A folder httpd's children may use: htdocs/, cores/."""
        if self._shared is None:
            self._shared = tempfile.mkdtemp(prefix="wsp-test-")
            os.chmod(self._shared, 0o755)
            os.mkdir(os.path.join(self._shared, "htdocs"))
            os.chmod(os.path.join(self._shared, "htdocs"), 0o755)
            os.mkdir(os.path.join(self._shared, "cores"))
            os.chmod(os.path.join(self._shared, "cores"), 0o777)
        return self._shared

    def backtraces(self):
        """gdb backtraces of the core files crashed children left."""
        out = []
        if self._shared is None:
            return out
        cores = Path(self._shared) / "cores"
        for core in sorted(cores.iterdir()):
            try:
                p = subprocess.run(
                    ["gdb", "-batch", "-nx", "-ex", "bt", APACHE, str(core)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, timeout=120)
                bt = []
                for l in p.stdout.decode(errors="replace").splitlines():
                    if l.startswith("#") and l not in bt:
                        bt.append(l)
                out.append("backtrace of %s:\n%s" % (core.name,
                                                     "\n".join(bt)))
            except (OSError, subprocess.TimeoutExpired) as e:
                out.append("no backtrace of %s: %s" % (core, e))
            if os.environ.get("WSP_KEEP_CORES"):
                shutil.move(str(core), str(self.root / core.name))
            else:
                core.unlink()
        return out

    def port(self):
        while True:
            with socket.socket() as s:
                s.bind((HOST, 0))
                p = s.getsockname()[1]
            if p not in self.ports:
                self.ports.add(p)
                return p

    def backend(self, name, subprotocols=None, start=True, args=()):
        """A t/backend.py; args are more of its options (e.g. --state)."""
        be = Backend(self, name, self.port(), subprotocols, args)
        self.backends.append(be)
        if start:
            be.start()
        return be

    @staticmethod
    def location(path, backends, *lines):
        """A <Location> handled by ws-persist with these backends."""
        out = ['<Location "%s">' % path, "    SetHandler ws-persist"]
        out += ["    WSPersistBackend %s" % (b if isinstance(b, str) else b.url)
                for b in backends]
        out += ["    " + l for l in lines]
        out.append("</Location>")
        return "\n".join(out) + "\n"

    def conf(self, body, ssl=False):
        """Write httpd.conf without starting (for configtest)."""
        self.httpd = Httpd(self, body, ssl=ssl)
        return self.httpd

    def start_httpd(self, body, ssl=False):
        return self.conf(body, ssl).start()

    def make_cert(self):
        tls = self.root / "tls"
        if (tls / "cert.pem").exists():
            return tls / "cert.pem"
        tls.mkdir(exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem"),
             "-days", "2", "-subj", "/CN=%s" % HOST,
             "-addext", "subjectAltName=IP:%s" % HOST],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=60)
        return tls / "cert.pem"

    def expect_error(self, pattern):
        """An error log line at level error or worse that matches pattern
        is expected (e.g. the module's 503/1013/1014 lines). Name the line
        itself (its client id and what it says), not only its pipe: a
        pattern that matches every line of a pipe hides its other faults."""
        self.expected_errors.append(re.compile(pattern))

    def expect_warn(self, pattern):
        """A ws_persist line at level warn that matches pattern is expected
        (a failover the test causes, a connect to a backend it killed).
        Any other ws_persist warn line fails the test, as an unexpected
        error line does."""
        self.expected_warns.append(re.compile(pattern))

    def expect_failover(self, cid=None, backend=None, why=KILLED,
                        messages=r"\d+"):
        """The warn line of a failover the test causes: cid's pipe (any
        pipe: None) leaves backend (a Backend or URL; None: any) because
        of why (a regex; by default what a killed backend causes)."""
        self.expect_warn(
            r"ws_persist: client %s \(\S+\) backend %s: backend interrupted "
            r"\((%s)\); failing over with %s message\(s\)" % (
                re.escape(cid) if cid else r"\S+", _url_rx(backend), why,
                messages))

    def expect_refused(self, backend, cid=None):
        """The warn lines of connects to backend, where nothing listens
        (the test killed it or never started it)."""
        self.expect_warn(
            r"ws_persist: client %s \(\S+\) backend %s: handshake failed: "
            r"connect: Connection refused$" % (
                re.escape(cid) if cid else r"\S+", _url_rx(backend)))

    def url(self, client_id, location="/ws/", query="", scheme="ws"):
        path = location + client_id + (("?" + query) if query else "")
        return self.httpd.url(path, scheme)

    def shutdown(self):
        """Stop httpd and the backends; return what went wrong."""
        problems = []
        if self.httpd:
            self.httpd.stop()
            problems += self.httpd.problems
        for be in self.backends:
            be.stop()
        return problems

    def cleanup(self):
        if self._shared:
            shutil.rmtree(self._shared, ignore_errors=True)
            self._shared = None

    def log_problems(self):
        problems = []
        if self.httpd:
            crashed = False
            for line in self.httpd.log_text().splitlines():
                if CRASH_RE.search(line) and not any(
                        "child pid %d exit signal Killed" % pid in line
                        for pid in self.expected_kills):
                    problems.append("crash: " + line)
                    crashed = True
                    continue
                m = LOG_LEVEL_RE.match(line)
                if not m:
                    continue
                if m.group(2) in BAD_LEVELS:
                    if any(rx.search(line) for rx in self.expected_errors):
                        continue
                    problems.append("unexpected: " + line)
                elif m.group(2) == WARN_LEVEL and m.group(1) == MODULE_TAG:
                    if any(rx.search(line) for rx in self.expected_warns):
                        continue
                    problems.append("unexpected warn: " + line)
            if crashed:
                problems += self.backtraces()
        problems += wsp_sanitize.reports(
            self._shared, self.httpd.log_text() if self.httpd else "")
        for be in self.backends:
            if "Traceback" in be.output():
                problems.append("backend %s raised:\n%s"
                                % (be.name, be.output()))
        return problems


# --------------------------------------------------------------------------
# websockets clients


CLIENT_DEFAULTS = dict(compression=None, max_size=None, ping_interval=None,
                       open_timeout=30, close_timeout=10)


def connect(env, client_id=None, location="/ws/", query="", scheme="ws",
            **kw):
    """websockets.connect() to the proxy: await it, or use async with."""
    opts = dict(CLIENT_DEFAULTS)
    opts.update(kw)
    cid = client_id or new_id()
    return websockets.connect(env.url(cid, location, query, scheme), **opts)


def connect_path(env, path, scheme="ws", **kw):
    """websockets.connect() to any path of the proxy."""
    opts = dict(CLIENT_DEFAULTS)
    opts.update(kw)
    return websockets.connect(env.httpd.url(path, scheme), **opts)


async def recv(ws, timeout=20):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError("no message from the proxy within %ss"
                             % timeout) from None


async def whoami(ws, timeout=20):
    await ws.send("whoami")
    return json.loads(await recv(ws, timeout))


async def echo(ws, msg, timeout=20):
    await ws.send(msg)
    got = await recv(ws, timeout)
    assert type(got) is type(msg) and got == msg, \
        "echo mismatch: sent %d %s, got %r" % (
            len(msg), type(msg).__name__,
            got[:80] if isinstance(got, (str, bytes)) else got)
    return got


async def closed(ws, timeout=20):
    """Wait for the connection to close; (code, reason) the peer sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        raise AssertionError("the proxy did not close the connection "
                             "within %ss" % timeout) from None
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code, ws.close_reason


async def rejected(env, client_id=None, location="/ws/", **kw):
    """Connect expecting an HTTP refusal; the InvalidStatusCode."""
    try:
        ws = await connect(env, client_id, location, **kw)
    except websockets.InvalidStatusCode as e:
        return e
    await ws.close()
    raise AssertionError("connection was accepted, expected a refusal")


# --------------------------------------------------------------------------
# Raw HTTP and frames


def ws_key():
    import base64
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()


def upgrade_headers(key=None, **extra):
    h = {"Host": "%s" % HOST, "Upgrade": "websocket",
         "Connection": "Upgrade", "Sec-WebSocket-Key": key or ws_key(),
         "Sec-WebSocket-Version": "13"}
    for k, v in extra.items():
        k = k.replace("_", "-")
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return h


class HttpResponse:
    def __init__(self, status, reason, headers, rest):
        self.status = status
        self.reason = reason
        self.headers = headers       # {lower-case name: value}
        self.rest = rest             # bytes after the head

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<HTTP %d %s %r>" % (self.status, self.reason, self.headers)


def read_head(sock, timeout):
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a response head: "
                                 "%r" % buf)
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        k = k.strip().lower()
        headers[k] = (headers[k] + ", " if k in headers else "") + v.strip()
    return HttpResponse(int(parts[1]), parts[2] if len(parts) > 2 else "",
                        headers, rest)


def send_request(sock, method, path, headers, body=b""):
    req = "%s %s HTTP/1.1\r\n" % (method, path)
    req += "".join("%s: %s\r\n" % kv for kv in headers.items())
    if body:
        req += "Content-Length: %d\r\n" % len(body)
    sock.sendall(req.encode("latin-1") + b"\r\n" + body)


def http_request(port, method, path, headers, body=b"", timeout=30):
    """One request on a fresh connection; the response head."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        send_request(s, method, path, headers, body)
        return read_head(s, timeout)


def build_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None):
    """rsv: the three RSV bits as a number, RSV1 = 4, RSV2 = 2, RSV3 = 1."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, mbit | n])
    elif n < 65536:
        hdr = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return hdr + payload
    key = key or os.urandom(4)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class RawWS:
    """A hand-driven WebSocket client on a plain socket."""

    OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = \
        0, 1, 2, 8, 9, 10

    def __init__(self, port, path, timeout=20):
        self.port = port
        self.path = path
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.response = None

    def handshake(self, **extra):
        key = ws_key()
        send_request(self.sock, "GET", self.path,
                     upgrade_headers(key, **extra))
        r = read_head(self.sock, self.timeout)
        self.response = r
        self.buf = r.rest
        if r.status == 101:
            assert r.header("sec-websocket-accept") == accept_for(key), r
        return r

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, opcode, payload=b"", **kw):
        self.sock.sendall(build_frame(opcode, payload, **kw))

    def _need(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no frame within %ss" % self.timeout)
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv_frame(self, timeout=None):
        """(fin, rsv, opcode, payload) or None at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        if not self._need(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            if not self._need(4, deadline):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            if not self._need(10, deadline):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        masked = b1 & 0x80
        if masked:
            off += 4
        if not self._need(off + n, deadline):
            return None
        payload = self.buf[off:off + n]
        if masked:   # a server must not mask; let the caller see it
            key = self.buf[off - 4:off]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload

    def recv_close(self, timeout=None):
        """Read frames until a close frame: (code, reason, frames before).
        code None: the connection ended without a close frame."""
        before = []
        while True:
            try:
                f = self.recv_frame(timeout)
            except ConnectionResetError:
                return None, None, before
            if f is None:
                return None, None, before
            fin, rsv, op, payload = f
            if op == self.OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] \
                    if len(payload) >= 2 else 1005
                return code, payload[2:].decode("utf-8", "replace"), before
            before.append(f)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
