"""Hostile and broken peers for the integration suite: t/hostile_backend.py
processes (managed like t/backend.py ones), the child's memory, and raw
clients."""

import os
import subprocess

import wsp_sanitize
from wsp_env import BACKEND, HOST, PYTHON, Backend, wait_until

# Under ASan (make test SANITIZE=1) memory holds redzones and a quarantine
# of freed blocks: resident sizes say nothing about the module there, so
# the memory bounds are checked in the plain run only.
MEMORY_CHECKED = not wsp_sanitize.ENABLED

HOSTILE = BACKEND.parent / "hostile_backend.py"


class HostileBackend(Backend):
    """One t/hostile_backend.py in a given mode."""

    def __init__(self, env, name, port, mode, flood_bytes=None):
        super().__init__(env, name, port)
        self.mode = mode
        self.flood_bytes = flood_bytes

    @property
    def url(self):
        return "ws://%s:%d/echo/" % (HOST, self.port)

    def _spawn(self):
        assert self.proc is None or self.proc.poll() is not None
        cmd = [PYTHON, str(HOSTILE), "--port", str(self.port),
               "--mode", self.mode, "--log", str(self.log_path)]
        if self.flood_bytes:
            cmd += ["--flood-bytes", str(self.flood_bytes)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def connections(self):
        return self.events("conn")

    def sent(self):
        """(bytes, frames, done) the flood mode reports as sent so far."""
        ev = self.events("sent")
        if not ev:
            return 0, 0, False
        return ev[-1]["bytes"], ev[-1]["frames"], bool(ev[-1].get("done"))


def hostile(env, name, mode, start=True, **kw):
    be = HostileBackend(env, name, env.port(), mode, **kw)
    env.backends.append(be)
    if start:
        be.start()
    return be


def child_pid(env):
    """The one child (the parent listens before it forks it)."""
    kids = wait_until(env.httpd.children, 30, what="httpd's child")
    assert len(kids) == 1, "expected one httpd child, found %r" % kids
    return kids[0]


def rss_kb(pid):
    """Resident set size of a process in KB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)
