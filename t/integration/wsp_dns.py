"""A DNS server of the test's own, and apache2 started where it is the only
name server.

DnsServer answers A queries for the names a test gives it, after a delay
the test sets, and counts the queries per name; every other name gets
NXDOMAIN, AAAA queries for known names an empty answer. It listens on UDP
port 53 of a loopback address of its own (resolv.conf cannot name a port),
so runs on one machine do not meet.

use_dns() makes wsp_env start apache2 (and its configtest) in a private
mount namespace where /etc/resolv.conf is a bind mount of a file naming
that server: nothing outside the test sees the change. It needs root (or
CAP_SYS_ADMIN) and unshare; dns_skip_reason() says why not, for a skip.
"""

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import wsp_env
from wsp_env import Backend, HOST, PYTHON, BACKEND

UNSHARE = shutil.which("unshare")


def _parse_query(data):
    """(id, flags, name, qtype, question bytes) of a query, or None."""
    if len(data) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount != 1 or flags & 0x8000:
        return None
    labels, off = [], 12
    while True:
        if off >= len(data):
            return None
        n = data[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0 or off + n > len(data):
            return None
        labels.append(data[off:off + n].decode("ascii", "replace"))
        off += n
    if off + 4 > len(data):
        return None
    qtype = struct.unpack("!H", data[off:off + 2])[0]
    return qid, flags, ".".join(labels).lower(), qtype, data[12:off + 4]


class DnsServer:
    """UDP DNS on ADDR:53. answers: {name: "127.0.0.x" or a list of
    them, each an A record of the answer}; delay in
    seconds before each answer (each query is answered on its own timer,
    so glibc's parallel A and AAAA queries both wait the delay once)."""

    A, AAAA = 1, 28

    def __init__(self, answers=None, delay=0.0, ttl=0):
        self.answers = {k.lower(): v for k, v in (answers or {}).items()}
        self.delay = delay
        self.ttl = ttl
        self.queries = {}           # name -> A queries seen
        self.lock = threading.Lock()
        self.sock = None
        for _ in range(50):
            addr = "127.53.%d.%d" % (random.randint(1, 254),
                                     random.randint(1, 254))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((addr, 53))
            except OSError:
                s.close()
                continue
            self.sock, self.addr = s, addr
            break
        if self.sock is None:
            raise OSError("no free loopback address for the DNS server")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def set(self, name, ip):
        """ip: an address, or a list of addresses (an A record each)."""
        with self.lock:
            self.answers[name.lower()] = ip

    def total(self):
        with self.lock:
            return sum(self.queries.values())

    def count(self, name):
        with self.lock:
            return self.queries.get(name.lower(), 0)

    def _serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return              # closed
            q = _parse_query(data)
            if q is None:
                continue
            with self.lock:
                if q[3] == self.A:
                    self.queries[q[2]] = self.queries.get(q[2], 0) + 1
                ip = self.answers.get(q[2])
            t = threading.Timer(self.delay, self._answer, (peer, q, ip))
            t.daemon = True
            t.start()

    def _answer(self, peer, q, ip):
        qid, flags, name, qtype, question = q
        rd = flags & 0x0100
        if ip is None:
            rcode, answers = 3, b""                     # NXDOMAIN
        elif qtype == self.A:
            rcode = 0
            ips = [ip] if isinstance(ip, str) else list(ip)
            answers = [b"\xc0\x0c" + struct.pack("!HHIH", self.A, 1,
                                                 self.ttl, 4)
                       + socket.inet_aton(a) for a in ips]
        else:
            rcode, answers = 0, []                      # no such record
        if len(question) + 12 + 16 * len(answers) > 512:
            flags_tc = 0x0200       # too long for UDP: glibc asks by TCP
            answers = []
        else:
            flags_tc = 0
        head = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode | flags_tc,
                           1, len(answers), 0, 0)
        answers = b"".join(answers)
        try:
            self.sock.sendto(head + question + answers, peer)
        except OSError:
            pass

    def close(self):
        self.sock.close()


def dns_skip_reason():
    """Why apache2 cannot be run under a private resolv.conf here, or
    None."""
    if not UNSHARE:
        return "unshare(1) is not installed"
    p = subprocess.run([UNSHARE, "--mount", "--propagation", "private",
                        "sh", "-c", "mount --bind /dev/null /etc/resolv.conf"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=30)
    if p.returncode:
        return ("cannot bind-mount /etc/resolv.conf in a private mount "
                "namespace (needs root): %s"
                % p.stdout.decode(errors="replace").strip())
    with open("/etc/nsswitch.conf") as f:
        for line in f:
            words = line.split("#")[0].split()
            if words and words[0] == "hosts:" and "dns" not in words:
                return "nsswitch.conf does not use DNS for hosts"
    return None


def use_dns(env, dns, monkeypatch):
    """Make env's apache2 use dns as its only name server."""
    resolv = env.root / "resolv.conf"
    resolv.write_text("nameserver %s\noptions timeout:5 attempts:1\n"
                      % dns.addr)
    resolv.chmod(0o644)
    wrapper = env.root / "apache2-dns"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# apache2 with %s as /etc/resolv.conf, in a mount namespace of\n"
        "# its own; unshare and sh exec, so the pid is apache2's\n"
        "exec %s --mount --propagation private sh -c "
        "'mount --bind \"$0\" /etc/resolv.conf && exec %s \"$@\"' "
        "%s \"$@\"\n" % (resolv, UNSHARE, wsp_env.APACHE, resolv))
    wrapper.chmod(0o755)
    monkeypatch.setattr(wsp_env, "APACHE", str(wrapper))


class HostBackend(Backend):
    """A t/backend.py echo backend on another loopback address, named in
    its URL by a DNS name."""

    def __init__(self, env, name, port, host=HOST, dns_name=None):
        super().__init__(env, name, port)
        self.host = host
        self.dns_name = dns_name
        env.backends.append(self)

    @property
    def url(self):
        return "ws://%s:%d/echo/" % (self.dns_name or self.host, self.port)

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [PYTHON, str(BACKEND), "--port", str(self.port),
               "--host", self.host, "--name", self.name,
               "--log", str(self.log_path)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)


def wait_queries(dns, name, n, timeout=15.0):
    """Wait until dns has seen n A queries for name."""
    deadline = time.monotonic() + timeout
    while dns.count(name) < n:
        if time.monotonic() > deadline:
            raise AssertionError("%d A queries for %s within %.0fs, "
                                 "expected %d" % (dns.count(name), name,
                                                  timeout, n))
        time.sleep(0.02)
    return dns.count(name)


