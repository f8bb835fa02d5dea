"""A headless Debian chromium for the integration suite, driven through
the DevTools protocol (CDP) over its WebSocket with python3-websockets.

Chromium runs with a profile in the test's tmp folder, listens for
DevTools on loopback only, resolves no name but 127.0.0.1 and has its
background network features (updates, sync, safe browsing, metrics) off:
a test's browser talks to the test's httpd and nothing else. Browser.stop()
SIGKILLs its whole process group, and the fixture of test_browser.py
calls it whatever the test did.
"""

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import websockets

CHROMIUM = "/usr/bin/chromium"

# What keeps chromium from calling home, and its DevTools and every name
# on loopback. MAP * ~NOTFOUND: no name resolves (a page of ours uses
# 127.0.0.1 only); Google's services have nothing to reach.
FLAGS = [
    "--headless=new",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=Translate,OptimizationHints,MediaRouter,"
    "DialMediaRouteProvider,CertificateTransparencyComponentUpdater,"
    "AutofillServerCommunication,InterestFeedContentSuggestions",
    "--safebrowsing-disable-auto-update",
    "--disable-field-trial-config",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def available():
    """Why chromium cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return ("%s is missing: the Debian package chromium "
                "(t/deps.sh test installs it as root)" % CHROMIUM)
    return None


class CdpError(Exception):
    pass


class Cdp:
    """One DevTools connection to the browser; pages are its flat
    sessions (Target.attachToTarget flatten)."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting = {}
        self.events = []            # (sessionId, method, params)
        self.changed = asyncio.Event()
        self.handlers = {}          # (sessionId, method) -> callback
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self.waiting.pop(msg["id"], None)
                    if fut and not fut.done():
                        fut.set_result(msg)
                    continue
                key = (msg.get("sessionId"), msg.get("method"))
                self.events.append(key + (msg.get("params", {}),))
                cb = self.handlers.get(key)
                if cb:
                    # never await here: a handler sends commands whose
                    # answers this loop has to read
                    asyncio.ensure_future(cb(msg.get("params", {})))
                self.changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(CdpError("DevTools connection lost"))

    async def send(self, method, session=None, timeout=30, **params):
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self.waiting[i] = fut
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise CdpError("%s: %s" % (method, reply["error"]))
        return reply.get("result", {})

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


class Page:
    """One tab."""

    def __init__(self, cdp, target, session):
        self.cdp = cdp
        self.target = target
        self.session = session
        self.dialogs = []           # (type, message) of every dialog
        self.dialog_answer = True   # accept confirm() dialogs

    async def send(self, method, **params):
        return await self.cdp.send(method, session=self.session, **params)

    async def _on_dialog(self, params):
        self.dialogs.append((params.get("type"), params.get("message")))
        await self.send("Page.handleJavaScriptDialog",
                        accept=self.dialog_answer)

    async def eval(self, expr, timeout=30):
        """The value of a JavaScript expression (awaited if a promise)."""
        r = await self.cdp.send("Runtime.evaluate", session=self.session,
                                timeout=timeout, expression=expr,
                                returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError("%s: %s" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    async def until(self, expr, timeout=20, what=None):
        """Poll expr until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = await self.eval(expr)
            except CdpError:
                v = None            # a navigation replaced the context
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %ds waiting for %s"
                                     % (timeout, what or expr))
            await asyncio.sleep(0.05)

    async def goto(self, url, timeout=30):
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && "
                         "location.href === %s" % json.dumps(url), timeout,
                         what="%s loaded" % url)

    async def screenshot(self, path):
        r = await self.send("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(r["data"]))
        return path


class Browser:
    """A headless chromium with its profile and logs under root."""

    def __init__(self, root, ignore_cert_errors=False):
        self.root = Path(root)
        self.profile = self.root / "chromium-profile"
        self.log_path = self.root / "chromium.log"
        self.ignore_cert_errors = ignore_cert_errors
        self.proc = None
        self.cdp = None
        self.pages = []

    async def start(self, timeout=60):
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd = [CHROMIUM] + FLAGS + ["--user-data-dir=%s" % self.profile]
        if os.geteuid() == 0:
            cmd.append("--no-sandbox")  # chromium refuses root otherwise
        if self.ignore_cert_errors:
            # the test's self-signed certificate: chromium keeps its own
            # trust store, the test's CA file is not in it
            cmd.append("--ignore-certificate-errors")
        cmd.append("about:blank")
        with open(self.log_path, "ab") as log:
            # a session of its own: stop() kills the whole group
            self.proc = subprocess.Popen(cmd, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("chromium exited with %s:\n%s" % (
                    self.proc.returncode, self.log()))
            lines = (port_file.read_text().split()
                     if port_file.exists() else [])
            if len(lines) >= 2:
                break
            if time.monotonic() > deadline:
                raise AssertionError("chromium wrote no DevToolsActivePort "
                                     "in %ds:\n%s" % (timeout, self.log()))
            await asyncio.sleep(0.1)
        url = "ws://127.0.0.1:%s%s" % (lines[0], lines[1])
        ws = await websockets.connect(url, max_size=None, ping_interval=None,
                                      compression=None)
        self.cdp = Cdp(ws)
        return self

    async def new_page(self, url="about:blank"):
        t = await self.cdp.send("Target.createTarget", url="about:blank")
        s = await self.cdp.send("Target.attachToTarget",
                                targetId=t["targetId"], flatten=True)
        page = Page(self.cdp, t["targetId"], s["sessionId"])
        self.cdp.handlers[(page.session, "Page.javascriptDialogOpening")] = \
            page._on_dialog
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        self.pages.append(page)
        if url != "about:blank":
            await page.goto(url)
        return page

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def group_alive(self):
        """Live pids of this browser: its process group, and whatever
        names its profile (chrome_crashpad_handler leaves the group)."""
        if not self.proc:
            return []
        pids = []
        mark = str(self.profile).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            # after the comm field's ")": state, ppid, pgrp
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":
                continue            # dead, only not reaped yet
            if int(fields[2]) == self.proc.pid or mark in cmdline:
                pids.append(int(d))
        return pids

    async def stop(self):
        """Close DevTools, SIGKILL the process group, reap; the pids
        that would not die (none, normally)."""
        if self.cdp:
            try:
                await asyncio.wait_for(self.cdp.close(), 5)
            except Exception:
                pass
            self.cdp = None
        return self.kill()

    def kill(self):
        if not self.proc:
            return []
        strays = [p for p in self.group_alive() if p != self.proc.pid]
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        left = self.group_alive()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)        # children reparented to init, dying
            left = self.group_alive()
        return left

    def cleanup(self):
        shutil.rmtree(self.profile, ignore_errors=True)
