"""Real browsers: a headless Debian chromium (wsp_browser.py, DevTools
protocol) opens WebSockets through the proxy from a page the test's httpd
serves, and an administrator's clicks on the manager page move them.

The page streams a numbered message every 15 ms and keeps what comes
back; the test kills or drains the backend under it and reads the page's
record: its socket never closed, and no echo came twice or out of order.
"""

import asyncio
import json
import os
import re
import subprocess

import pytest

import wsp_browser
from wsp_env import MODDIR, interruptions, new_id, wait_until
from wsp_manage import MANAGER

FAST = ("WSPersistConnectTimeout 5", "WSPersistRetry 50ms 500ms")

# WebSockets over HTTP/2 as the README's wss:// section turns them on
H2 = """\
LoadModule http2_module {moddir}/mod_http2.so
Protocols h2 http/1.1
H2WebSockets on
""".format(moddir=MODDIR)

# static pages need a type: the base config loads no mod_mime
HTML_TYPE = """\
<Files "*.html">
    ForceType "text/html; charset=utf-8"
</Files>
"""

# The page: its socket to ?url=, a whoami first (t/backend.py answers
# with its name), then, when the test calls go(), the number of messages
# sent so far every 15 ms. window.st is what the test reads.
STREAM_PAGE = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>stream</title></head><body>
<p id="status">connecting</p>
<script>
var st = {open: false, closed: null, sent: 0, got: [], who: [], errors: 0};
var timer = null;
var ws = new WebSocket(new URLSearchParams(location.search).get('url'));
ws.onopen = function () { st.open = true; ws.send('whoami'); };
ws.onerror = function () { st.errors++; };
ws.onclose = function (e) {
  st.closed = {code: e.code, reason: e.reason, clean: e.wasClean};
};
ws.onmessage = function (e) {
  if (e.data.charAt(0) === '{') { st.who.push(JSON.parse(e.data).name); }
  else { st.got.push(parseInt(e.data, 10)); }
  document.getElementById('status').textContent =
    'sent ' + st.sent + ', got ' + st.got.length;
};
function go() {
  timer = setInterval(function () { st.sent++; ws.send(String(st.sent)); },
                      15);
}
function halt() { clearInterval(timer); return st.sent; }
function whoami() { ws.send('whoami'); return st.who.length + 1; }
</script>
</body></html>
"""


@pytest.fixture
def browser(env):
    """A Browser not yet started (the test starts it in its own event
    loop); SIGKILLed with its whole process group at the end, and the
    test fails if any of it survives."""
    why = wsp_browser.available()
    if why:
        pytest.skip(why)
    made = []

    def make(**kw):
        b = wsp_browser.Browser(env.root, **kw)
        made.append(b)
        return b
    yield make
    left = []
    for b in made:
        left += b.kill()
        b.cleanup()
    assert not left, "chromium processes survived: %s" % left


def serve_page(env):
    path = os.path.join(env.shared(), "htdocs", "stream.html")
    with open(path, "w") as f:
        f.write(STREAM_PAGE)
    os.chmod(path, 0o644)


def stream_urls(env, scheme):
    """The page's URL (same origin as its socket) for a fresh client id,
    and the id."""
    cid = new_id()
    http = "https" if scheme == "wss" else "http"
    ws = env.url(cid, scheme=scheme)
    return env.httpd.url("/stream.html?url=" + ws, http), cid


async def open_stream(browser, url):
    page = await browser.new_page(url)
    await page.until("st.open && st.who.length === 1", 20,
                     what="the page's socket open and its whoami answer")
    return page, (await page.eval("st.who[0]"))


async def numbers(page):
    return await page.eval("st.got")


async def finish(page):
    """Stop streaming; wait until every message sent is echoed (or 20 s);
    (sent, got, close)."""
    sent = await page.eval("halt()")
    await page.until("st.got.length && st.got[st.got.length - 1] === %d"
                     % sent, 20, what="the echo of the last message %d"
                     % sent)
    return sent, await numbers(page), await page.eval("st.closed")


def assert_in_order_once(got):
    assert all(a < b for a, b in zip(got, got[1:])), \
        "an echo twice or out of order: %s" % [
            (a, b) for a, b in zip(got, got[1:]) if a >= b][:5]


# --------------------------------------------------------------------------
# A backend killed under a browser's socket


@pytest.mark.alarm(180)
@pytest.mark.parametrize("variant", ["ws", "wss", "wss-h2"])
def test_browser_socket_survives_backend_kill(env, browser, variant):
    """The page's backend is SIGKILLed mid-stream with a spare up: the
    page's socket stays open, and every message it sent after the kill
    comes back once, in order (one sent before it may be lost: DESIGN 3,
    a message written whole to the killed backend); what comes back is
    never twice nor out of order; one the page misses from before the
    kill is one the killed backend had whole. Over ws:// and wss://
    (HTTP/1.1), and wss:// over HTTP/2 (RFC 8441: the page came over h2,
    and chromium opens its socket as a stream of that connection)."""
    scheme = variant.split("-")[0]
    h2 = variant.endswith("-h2")
    b1, b2 = env.backend("b1"), env.backend("b2")
    backends = {"b1": b1, "b2": b2}
    serve_page(env)
    env.start_httpd((H2 if h2 else "") + HTML_TYPE
                    + env.location("/ws/", [b1, b2], *FAST),
                    ssl=scheme == "wss")
    url, cid = stream_urls(env, scheme)
    env.expect_failover(cid)

    async def run():
        br = await browser(ignore_cert_errors=scheme == "wss").start()
        page, name = await open_stream(br, url)
        victim = backends[name]
        spare = b2 if victim is b1 else b1
        env.expect_refused(victim, cid)     # should the pool try it again
        await page.eval("go()")
        await page.until("st.got.length >= 30", 20, what="30 echoes")
        remains = victim.kill_keeping_sockets()
        after = await page.eval("st.sent")  # later numbers left after it
        await page.until("st.got.length && st.got[st.got.length - 1] > %d"
                         % (after + 40), 30,
                         what="echoes of 40 messages sent after the kill")
        assert interruptions(env, cid) >= 1, "the proxy saw no kill"
        sent, got, closed = await finish(page)
        assert closed is None, "the page's socket closed: %s" % closed
        assert await page.eval("ws.readyState") == 1
        assert_in_order_once(got)
        missing = sorted(set(range(after + 1, sent + 1)) - set(got))
        assert not missing, "sent after the kill, never echoed: %s" % \
            missing[:20]
        # before it: only what the killed backend had whole (it logged it,
        # or it sat in its socket unread)
        whole, _ = await asyncio.to_thread(victim.lost_with, cid, remains)
        lost = sorted(set(range(1, after + 1)) - set(got))
        assert set(lost) <= set(int(h) for h in whole if h.isdigit()), \
            "lost %s, the killed backend had whole only %s" % (lost, whole)
        n = await page.eval("whoami()")
        await page.until("st.who.length === %d" % n, 20)
        assert (await page.eval("st.who"))[-1] == spare.name
        print("%s: kill after #%d; %d sent, %d echoed" % (
            variant, after, sent, len(got)))
        await br.stop()
    asyncio.run(run())
    # the socket's request, as the handler got it, came over HTTP/2 in
    # the h2 variant (over HTTP/1.1 in the others)
    # (logged when the pipe has ended, which the browser's close starts)
    def ws_lines():
        access = (env.root / "logs" / "access_log").read_text()
        return [ln for ln in access.splitlines()
                if "\"GET /ws/%s " % cid in ln]
    wait_until(ws_lines, 10, what="the socket's access log line")
    ws_lines = ws_lines()
    assert len(ws_lines) == 1, ws_lines
    assert ("HTTP/2.0\"" in ws_lines[0]) == h2, ws_lines[0]


# --------------------------------------------------------------------------
# The manager page in the browser


def row_js(url, what):
    """JavaScript for the manager row of url: its state cell's text
    ("state") or a click on one of its buttons (an action)."""
    row = ("[...document.querySelectorAll('tr')].find(r => r.cells[0] && "
           "r.cells[0].textContent === %s)" % json.dumps(url))
    if what == "state":
        return "(%s || {cells: [0, {textContent: ''}]}).cells[1]" \
               ".textContent" % row
    return ("(function () { var b = %s.querySelector('button[value=%s]'); "
            "b.click(); return true; })()" % (row, what))


@pytest.mark.alarm(180)
def test_manager_drain_by_click_moves_a_live_page(env, browser):
    """A live page streams through b; in a second tab the administrator
    clicks drain on b's row. The manager page comes back saying so and
    shows b draining (the spare is held stopped, so the move waits), then,
    reloading itself, drained once the spare answers; the streaming
    page's socket never closed, its echoes came from the spare, every
    one of them once and in order."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    backends = {"b1": b1, "b2": b2}
    serve_page(env)
    env.start_httpd(MANAGER + HTML_TYPE
                    + env.location("/ws/", [b1, b2], *FAST))
    url, cid = stream_urls(env, "ws")
    shots = env.root.parent

    async def run():
        br = await browser().start()
        page, name = await open_stream(br, url)
        victim = backends[name]
        spare = b2 if victim is b1 else b1
        # held stopped, the spare may time a replacement handshake out on
        # a slow machine: the pipe stays on the victim and tries again
        env.expect_warn(
            r"ws_persist: client %s \(\S+\) backend %s: backend draining: "
            r"replacement %s failed \(handshake timed out\); staying for "
            r"now$" % (cid, re.escape(victim.url), re.escape(spare.url)))
        await page.eval("go()")
        await page.until("st.got.length >= 30", 20, what="30 echoes")

        mgr = await br.new_page(env.httpd.url("/ws-manager", "http"))
        assert await mgr.eval(row_js(victim.url, "state")) == "ok"
        spare.pause()                       # the move waits for it
        await mgr.eval(row_js(victim.url, "drain"))
        await mgr.until("location.search.startsWith('?done=drain') && "
                        "document.readyState === 'complete'", 20,
                        what="the page after the drain")
        assert await mgr.eval(
            "document.getElementById('result').textContent") == \
            "Done: drain %s in pool /ws/." % victim.url
        assert await mgr.eval(row_js(victim.url, "state")) == "draining"
        await mgr.screenshot(shots / "manager-draining.png")
        # the page reloads itself from now on
        await mgr.eval("document.querySelector('#refresh a').click()")
        await mgr.until("location.search === '?refresh=5'", 20)
        spare.resume()
        await mgr.until(row_js(victim.url, "state") + " === 'drained'", 30,
                        what="the manager reloading to 'drained'")
        await mgr.screenshot(shots / "manager-drained.png")

        sent, got, closed = await finish(page)
        assert closed is None, "the page's socket closed: %s" % closed
        assert_in_order_once(got)
        assert got == list(range(1, sent + 1)), "a drain loses nothing"
        n = await page.eval("whoami()")
        await page.until("st.who.length === %d" % n, 20)
        assert (await page.eval("st.who"))[-1] == spare.name
        await br.stop()
    asyncio.run(run())


@pytest.mark.alarm(120)
def test_manager_remove_asks_first(env, browser):
    """remove opens a confirm() naming the backend: dismissed, nothing
    happens; accepted, the backend is gone and the page says so."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    env.start_httpd(MANAGER + env.location("/ws/", [b1, b2], *FAST))

    async def run():
        br = await browser().start()
        mgr = await br.new_page(env.httpd.url("/ws-manager", "http"))
        mgr.dialog_answer = False
        await mgr.eval(row_js(b2.url, "remove"))
        assert mgr.dialogs == [
            ("confirm", "Remove %s from pool /ws/?" % b2.url)]
        await asyncio.sleep(0.5)
        assert await mgr.eval("location.search") == ""
        assert await mgr.eval(row_js(b2.url, "state")) == "ok"
        mgr.dialog_answer = True
        await mgr.eval(row_js(b2.url, "remove"))
        await mgr.until("location.search.startsWith('?done=remove') && "
                        "document.readyState === 'complete'", 20)
        assert len(mgr.dialogs) == 2
        assert await mgr.eval(
            "document.getElementById('result').textContent") == \
            "Done: remove %s in pool /ws/." % b2.url
        assert await mgr.eval(row_js(b2.url, "state")) == ""
        assert await mgr.eval(row_js(b1.url, "state")) == "ok"
        await br.stop()
    asyncio.run(run())


# --------------------------------------------------------------------------
# The README's resume client (WSPersistResumeWindow) in the browser

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                      "README.md")

# The page: the README's client, run as a reader would, against ?url=;
# window.st is what the test reads.
RESUME_PAGE = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>resume</title></head><body>
<p id="status">connecting</p>
<script>
%s
var st = {got: [], fresh: 0};
var sock = persistentSocket(new URLSearchParams(location.search).get('url'),
  {message: function (d) {
     st.got.push(d);
     document.getElementById('status').textContent = 'got ' + st.got.length;
   },
   fresh: function () { st.fresh++; }});
</script>
</body></html>
"""


def readme_client():
    """The JavaScript between the README's resume-client-example
    markers, without its code fence."""
    with open(README) as f:
        text = f.read()
    m = re.search(r"<!-- resume-client-example -->\s*```js\n(.*?)```\s*"
                  r"<!-- /resume-client-example -->", text, re.S)
    assert m, "README.md has no resume-client-example block"
    return m.group(1)


def drop_browser_connections(port):
    """Destroy the browser's TCP connections to port (ss -K: the kernel
    resets them, the browser sees them abort): no close frame either way.
    How many it destroyed."""
    out = subprocess.run(
        ["ss", "-K", "-tnH", "state", "established", "dst", "127.0.0.1",
         "dport", "=", ":%d" % port],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    assert out.returncode == 0, out.stdout
    return len(out.stdout.decode().splitlines())


@pytest.mark.alarm(180)
def test_readme_resume_client_gets_every_message_once(env, browser):
    """The README's JavaScript client in chromium: it counts what it
    receives of a backend streaming c1..c300; the browser's connection is
    reset under it mid-stream (ss -K), it reconnects with
    ?wsp_received=N, the proxy resumes the session on the same backend
    connection, and the page holds every message exactly once, in
    order, in one session."""
    if os.geteuid() != 0:
        pytest.skip("ss -K needs CAP_NET_ADMIN")
    a = env.backend("a")
    path = os.path.join(env.shared(), "htdocs", "resume.html")
    with open(path, "w") as f:
        f.write(RESUME_PAGE % readme_client())
    os.chmod(path, 0o644)
    env.start_httpd(HTML_TYPE + env.location("/ws/", [a], *FAST,
                                             "WSPersistResumeWindow 30"))
    url = env.httpd.url("/resume.html?url=" + env.url(""), "http")
    total = 300

    async def run():
        br = await browser().start()
        page = await br.new_page(url)
        await page.until("sock.ws.readyState === 1", 20,
                         what="the client's socket open")
        cid = await page.eval("sock.id")
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                            r"[89ab][0-9a-f]{3}-[0-9a-f]{12}", cid), cid
        assert await page.eval("sock.send('count:%d:10')" % total)
        await page.until("st.got.length >= 50", 20, what="50 messages")
        dropped = await asyncio.to_thread(drop_browser_connections,
                                          env.httpd.port)
        assert dropped >= 1, "no connection of the browser's to drop"
        before = await page.eval("st.got.length")
        assert before < total, "the stream ended before the drop"
        await page.until("st.got.length >= %d" % total, 60,
                         what="all %d messages" % total)
        await asyncio.sleep(0.3)            # nothing more may come
        got = await page.eval("st.got")
        fresh = await page.eval("st.fresh")
        await page.eval("sock.close()")
        await br.stop()
        return cid, before, got, fresh

    cid, before, got, fresh = asyncio.run(run())
    assert got == ["c%d" % i for i in range(1, total + 1)], \
        "not every message once and in order: %s" % [
            (i, g) for i, g in enumerate(got, 1) if g != "c%d" % i][:5]
    assert fresh == 1, "the client had to start afresh (4410)"
    assert env.httpd.log_lines(r"client %s .*session detached" % cid)
    resumed = env.httpd.log_lines(r"client %s .*session resumed: the client "
                                  r"received (\d+) message" % cid)
    assert len(resumed) == 1, resumed
    assert len(a.opens(cid)) == 1, "one backend connection for the session"
    print("dropped after %d of %d; %s" % (before, total, resumed[0]))
