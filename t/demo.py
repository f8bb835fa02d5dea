#!/usr/bin/python3
"""mod_ws_persist demo: httpd with the module in front of two echo backends.

    make -f Makefile.apxs demo        (or: /usr/bin/python3 t/demo.py)

Writes a server root in build/demo/, starts two t/backend.py echo backends
and /usr/sbin/apache2 in the foreground with the freshly built
.libs/mod_ws_persist.so, prints how to connect a client and how to kill a
backend under it, then shows the module's log lines and the backends'
events until Ctrl-C, which stops httpd and the backends.

Environment:
    WSP_DEMO_PORT            httpd's port on 127.0.0.1 (8080)
    WSP_DEMO_BACKEND_PORTS   the backends' ports, comma separated (9001,9002)
"""

import ctypes
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "build" / "demo"
MODULE = REPO / ".libs" / "mod_ws_persist.so"
BACKEND = REPO / "t" / "backend.py"
CLIENT = REPO / "t" / "demo_client.py"
PYTHON = "/usr/bin/python3"
APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"
HOST = "127.0.0.1"
CONNECT_TIMEOUT = 10
RESUME_WINDOW = 60

sys.path.insert(0, str(REPO / "t"))
from wsp_user import run_user  # noqa: E402

CONF = """\
# Written by t/demo.py; rewritten on every run.
ServerRoot "{root}"
ServerName {host}
DefaultRuntimeDir "{root}/run"
PidFile "{root}/run/httpd.pid"
DocumentRoot "{root}/htdocs"
{user}
LoadModule mpm_event_module {moddir}/mod_mpm_event.so
LoadModule authz_core_module {moddir}/mod_authz_core.so
LoadModule authz_host_module {moddir}/mod_authz_host.so
LoadModule status_module {moddir}/mod_status.so
LoadModule ws_persist_module {module}

# One child: a session is resumed only by the child that holds it (the
# client registry is per child; the backend state is shared by any
# number). Under the event MPM idle WebSockets hold no worker thread.
StartServers 1
ServerLimit 1
ThreadLimit 32
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64

ErrorLog "{root}/logs/error_log"
LogLevel warn ws_persist:debug
LogFormat "%h %t \\"%r\\" %>s %D" demo
CustomLog "{root}/logs/access_log" demo

Listen {host}:{port}

<Location "/ws/">
    SetHandler ws-persist
{backends}
    WSPersistRetry 100ms 2s
    WSPersistConnectTimeout {timeout}
    # a client whose connection drops without a close frame may come back
    # within this long and resume its session (the demo client's d key)
    WSPersistResumeWindow {window}
</Location>

# Drain, disable, enable, remove and add backends at run time.
<Location "/ws-manager">
    SetHandler ws-persist-manager
    Require ip 127.0.0.1
</Location>

<Location "/server-status">
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
"""

# "[date] [module:level] [pid N:tid N] [client ip:port] file.c(N): text"
LOG_RE = re.compile(r"^\[[^\]]*\] \[([^\]]*)\] \[pid [^\]]*\] "
                    r"(?:\[client [^\]]*\] )?(?:\S+\.c\(\d+\): )?"
                    r"(?:ws_persist: )?(.*)$")

out_lock = threading.Lock()


def say(*lines):
    with out_lock:
        for line in lines:
            print(line)
        sys.stdout.flush()


def fail(msg):
    say("demo: " + msg)
    sys.exit(1)


def shown(path):
    """A path as the user types it from the current directory."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_ports():
    try:
        port = int(os.environ.get("WSP_DEMO_PORT", "8080"))
        bports = [int(p) for p in re.split(
            r"[,\s]+", os.environ.get("WSP_DEMO_BACKEND_PORTS",
                                      "9001,9002").strip()) if p]
    except ValueError:
        fail("WSP_DEMO_PORT and WSP_DEMO_BACKEND_PORTS take port numbers, "
             "e.g. WSP_DEMO_PORT=8081 WSP_DEMO_BACKEND_PORTS=9101,9102")
    if not bports or len(set(bports + [port])) != len(bports) + 1:
        fail("need one httpd port and distinct backend ports")
    return port, bports


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def port_open(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# If the demo itself dies without cleaning up, its children get SIGTERM
# rather than keep the ports.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    if _prctl is not None:
        _prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG


def spawn(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=_die_with_parent)


def stop_proc(proc, timeout):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class Backend:
    def __init__(self, name, port):
        self.name = name
        self.port = port
        self.proc = None
        self.ready = threading.Event()
        self.reported_dead = False

    @property
    def url(self):
        return "ws://%s:%d/echo/" % (HOST, self.port)

    @property
    def cmd(self):
        return [PYTHON, str(BACKEND), "--port", str(self.port),
                "--name", self.name]

    def start(self):
        self.ready.clear()
        self.reported_dead = False
        self.proc = spawn(self.cmd)
        threading.Thread(target=self._relay, args=(self.proc,),
                         daemon=True).start()
        if not self.ready.wait(15) or self.proc.poll() is not None:
            return False
        return True

    def _relay(self, proc):
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("ready "):
                self.ready.set()
            say("%-6s| %s" % (self.name, line))
        proc.stdout.close()

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        stop_proc(self.proc, 5)


class Demo:
    def __init__(self):
        self.port, bports = parse_ports()
        self.backends = [Backend("b%d" % (i + 1), p)
                         for i, p in enumerate(bports)]
        self.httpd = None
        self.stopping = threading.Event()
        self.log_done = threading.Event()
        self.events = queue.Queue()
        self.error_log = ROOT / "logs" / "error_log"
        self.conf = ROOT / "conf" / "httpd.conf"

    # -- setup ------------------------------------------------------------

    def check(self):
        if not Path(APACHE).exists():
            fail("%s not found: sudo apt-get install apache2" % APACHE)
        if not MODULE.exists():
            fail("%s is not built: make -f Makefile.apxs" % shown(MODULE))
        if subprocess.run([PYTHON, "-c", "import websockets"],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode:
            fail("python3-websockets is missing: "
                 "sudo apt-get install python3-websockets")
        busy = [p for p in [self.port] + [b.port for b in self.backends]
                if not port_free(p)]
        if busy:
            fail("port(s) %s on %s already in use (an earlier demo still "
                 "running?); choose others with WSP_DEMO_PORT=8081 "
                 "WSP_DEMO_BACKEND_PORTS=9101,9102"
                 % (", ".join(map(str, busy)), HOST))

    def write_root(self):
        if ROOT.exists():
            shutil.rmtree(ROOT)
        for d in ("conf", "logs", "run", "htdocs"):
            (ROOT / d).mkdir(parents=True)
        backends = "\n".join("    WSPersistBackend %s" % b.url
                             for b in self.backends)
        self.conf.write_text(CONF.format(
            root=ROOT, host=HOST, port=self.port, user=run_user(),
            moddir=MODDIR, module=MODULE, backends=backends,
            timeout=CONNECT_TIMEOUT, window=RESUME_WINDOW))

    def start_httpd(self):
        self.httpd = spawn([APACHE, "-f", str(self.conf), "-d", str(ROOT),
                            "-DFOREGROUND"])
        threading.Thread(target=self._relay_httpd, daemon=True).start()
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            if self.httpd.poll() is not None:
                time.sleep(0.2)          # let the relay print why
                fail("apache2 exited with status %d; see above and %s"
                     % (self.httpd.returncode, shown(self.error_log)))
            if time.monotonic() > deadline:
                fail("apache2 did not listen on %s:%d within 20 s"
                     % (HOST, self.port))
            time.sleep(0.05)
        threading.Thread(target=self._tail_log, daemon=True).start()

    def _relay_httpd(self):
        for raw in self.httpd.stdout:
            say("httpd | " + raw.decode(errors="replace").rstrip())

    def _tail_log(self):
        """The error log, shortened, as it grows."""
        with open(self.error_log, errors="replace") as f:
            while not self.log_done.is_set():
                line = f.readline()
                if not line:
                    time.sleep(0.1)
                    continue
                m = LOG_RE.match(line.rstrip())
                say("httpd | " + ("[%s] %s" % m.groups() if m
                                  else line.rstrip()))

    def _read_stdin(self):
        try:
            for _ in sys.stdin:
                self.events.put("enter")
        except (OSError, ValueError):
            pass

    # -- the show ---------------------------------------------------------

    def banner(self):
        client_url = "ws://%s:%d/ws/%s" % (HOST, self.port, uuid.uuid4())
        first = self.backends[0]
        lines = [
            "",
            "=" * 76,
            "mod_ws_persist demo",
            "",
            "  httpd       pid %d, listening on %s:%d" % (
                self.httpd.pid, HOST, self.port),
            "              config %s" % shown(self.conf),
            "              error log %s (LogLevel warn ws_persist:debug),"
            % shown(self.error_log),
            "              shown below as \"httpd |\"",
        ]
        for b in self.backends:
            lines.append("  backend %-3s %s  pid %d" % (b.name, b.url,
                                                        b.proc.pid))
        lines += [
            "",
            "1. Connect a client in another terminal. It sends a numbered "
            "message every",
            "   0.5 s and says which backend echoed it (the last path "
            "segment is the",
            "   client id, any UUID):",
            "",
            "     %s %s %s" % (PYTHON, shown(CLIENT), client_url),
            "",
            "2. Kill the backend the client is on and watch the client "
            "carry on:",
            "",
        ]
        for b in self.backends:
            lines.append("     kill -9 %d        # %s" % (b.proc.pid, b.name))
        lines += [
            "",
            "3. Press Enter here to restart killed backends on their "
            "ports, or start",
            "   one by hand (then stop it by hand too):",
            "",
            "     %s" % " ".join([PYTHON, shown(BACKEND)] + first.cmd[2:]),
            "",
            "   Kill all backends and restart one within %d s "
            "(WSPersistConnectTimeout):" % CONNECT_TIMEOUT,
            "   the client pauses and carries on; later it is closed with "
            "1014.",
            "",
            "4. Drain the client's backend in the manager: the client moves "
            "to the other",
            "   one without a pause; the server status shows both:",
            "",
            "     http://%s:%d/ws-manager" % (HOST, self.port),
            "     http://%s:%d/server-status" % (HOST, self.port),
            "",
            "5. Type d and Enter in the client: it drops its own connection "
            "(no close",
            "   frame) and comes back with its id and the count of messages "
            "it got;",
            "   the proxy resumes the session on the same backend "
            "(WSPersistResumeWindow",
            "   %d s) and sends again what the client missed." % RESUME_WINDOW,
            "",
            "Ctrl-C stops httpd and the backends.",
            "=" * 76,
            "",
        ]
        say(*lines)

    def restart_dead(self):
        dead = [b for b in self.backends if not b.alive]
        if not dead:
            say("demo  | all backends are running")
        for b in dead:
            if not port_free(b.port):
                say("demo  | port %d is taken (a backend started by hand?)"
                    % b.port)
                continue
            if b.start():
                say("demo  | restarted %s: pid %d   (kill -9 %d)"
                    % (b.name, b.proc.pid, b.proc.pid))
            else:
                say("demo  | %s did not start" % b.name)

    def watch(self):
        while not self.stopping.is_set():
            try:
                ev = self.events.get(timeout=0.3)
            except queue.Empty:
                ev = None
            if ev == "enter":
                self.restart_dead()
            if self.httpd.poll() is not None:
                say("demo  | apache2 exited with status %d; see %s"
                    % (self.httpd.returncode, shown(self.error_log)))
                return 1
            for b in self.backends:
                if not b.alive and not b.reported_dead:
                    b.reported_dead = True
                    say("demo  | %s (pid %d) is gone; press Enter to "
                        "restart it" % (b.name, b.proc.pid))
        return 0

    def shutdown(self):
        self.stopping.set()
        stop_proc(self.httpd, 20)
        time.sleep(0.3)                  # the log's last lines
        self.log_done.set()
        for b in self.backends:
            b.stop()

    def run(self):
        self.check()
        self.write_root()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            for b in self.backends:
                if not b.start():
                    fail("backend %s did not start on port %d"
                         % (b.name, b.port))
            self.start_httpd()
            self.banner()
            threading.Thread(target=self._read_stdin, daemon=True).start()
            return self.watch()
        finally:
            say("demo  | stopping httpd and the backends (httpd takes up "
                "to 10 s while clients are connected)")
            self.shutdown()
            say("demo  | stopped; logs stay in %s" % shown(ROOT / "logs"))

    def _on_signal(self, signum, frame):
        self.stopping.set()


if __name__ == "__main__":
    sys.exit(Demo().run())
