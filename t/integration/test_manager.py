"""The ws-persist-manager handler: the backends of every pool as JSON and
as an HTML page, and the administrator's actions (add, drain, remove,
enable, disable) applied in shared memory, with the Host, nonce, Referer
and Origin checks in front of them and framing forbidden on every
answer."""

import asyncio
import json
import re
import socket
import struct
from html.parser import HTMLParser

import pytest

from wsp_env import HOST, MODDIR, await_until, connect, echo, new_id, \
    wait_until, whoami
from wsp_manage import (MANAGER, TWO_CHILDREN, applied, backend_of,
                        expect_refusal, pool_of,
                        post, request, state)

FAST = ("WSPersistConnectTimeout 5", "WSPersistRetry 50ms 500ms")


def start(env, backends, *lines, extra=""):
    env.start_httpd(MANAGER + env.location("/ws/", backends, *FAST, *lines)
                    + extra)


# --------------------------------------------------------------------------
# GET


def test_json_lists_pools_with_live_pipe_counts(env):
    """Every pool and backend is listed; pipe counts follow the clients
    that are open, per backend and per pool."""
    b1, b2, b3 = env.backend("b1"), env.backend("b2"), env.backend("b3")
    start(env, [b1, b2], extra=env.location("/other/", [b3]))

    async def run():
        clients = [await connect(env) for _ in range(3)]
        names = [(await whoami(ws))["name"] for ws in clients]
        doc = state(env)
        assert sorted(p["name"] for p in doc["pools"]) == ["/other/", "/ws/"]
        assert pool_of(doc)["pipes"] == 3
        assert pool_of(doc, "/other/")["pipes"] == 0
        for be in (b1, b2):
            info = backend_of(doc, be.url)
            assert info["pipes"] == names.count(be.name), (names, info)
            assert info["state"] == "ok"
            assert info["added"] is False
        assert backend_of(doc, b3.url, "/other/")["pipes"] == 0
        assert isinstance(doc["nonce"], str) and len(doc["nonce"]) >= 16

        for ws in clients:
            await ws.close()
        await await_until(lambda: pool_of(state(env))["pipes"] == 0, 20,
                          what="the pipes counted out after the closes")
    asyncio.run(run())


def test_json_has_every_documented_field(env):
    b1 = env.backend("b1")
    start(env, [b1])
    status, headers, body = request(env, "GET",
                                    headers={"Accept": "application/json"})
    assert status == 200
    assert headers["cache-control"] == "no-store"
    doc = json.loads(body)
    assert set(doc) == {"nonce", "pools"}
    pool = pool_of(doc)
    assert set(pool) == {"name", "pipes", "free_slots", "detached",
                         "resumed", "expired", "backends"}
    assert (pool["detached"], pool["resumed"], pool["expired"]) == (0, 0, 0)
    assert pool["free_slots"] == 16, "WSPersistBackendSlots' default"
    assert set(pool["backends"][0]) == {
        "url", "state", "weight", "pipes", "errors", "consecutive_errors",
        "served", "failovers", "bytes_in", "bytes_out", "added", "removing",
        "check"}
    assert pool["backends"][0]["check"] is None, "no WSPersistHealthCheck"


@pytest.mark.parametrize("accept,json_wanted", [
    ("application/json", True),
    ("text/html;q=0.9, Application/JSON", True),
    ("text/html, application/json; q=0.5", True),
    ("text/html,application/xhtml+xml,*/*;q=0.8", False),
    ("*/*", False),
    ("application/json;q=0, text/html", False),
    ("application/jsonx", False),
    ("application/json-patch+json", False),
])
def test_accept_names_application_json(env, accept, json_wanted):
    """JSON only for an Accept that names application/json with q > 0;
    a browser's wildcards get the page."""
    b1 = env.backend("b1")
    start(env, [b1])
    status, headers, body = request(env, "GET", headers={"Accept": accept})
    assert status == 200
    if json_wanted:
        assert headers["content-type"] == "application/json"
        json.loads(body)
    else:
        assert headers["content-type"] == "text/html; charset=utf-8"


def test_head_answers_headers_only(env):
    b1 = env.backend("b1")
    start(env, [b1])
    status, headers, body = request(env, "HEAD",
                                    headers={"Accept": "application/json"})
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == b""


class Forms(HTMLParser):
    """The forms of a page: method, action, hidden fields, buttons, text
    inputs."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.cells = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"method": a.get("method"),
                               "action": a.get("action"), "hidden": {},
                               "buttons": [], "text": []})
        elif tag == "input" and self.forms:
            if a.get("type") == "hidden":
                self.forms[-1]["hidden"][a["name"]] = a.get("value")
            elif a.get("type") == "text":
                self.forms[-1]["text"].append(a["name"])
        elif tag == "button" and self.forms:
            self.forms[-1]["buttons"].append((a.get("name"), a.get("value")))

    def handle_data(self, data):
        self.cells.append(data)


def test_html_page_lists_backends_with_forms(env):
    """The page shows every backend and, for each, a form with the
    actions an ok backend allows; each pool has an add form; all carry
    the nonce and post to the manager's own URI."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    nonce = state(env)["nonce"]
    status, headers, body = request(env, "GET")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    page = Forms()
    page.feed(body.decode())
    for be in (b1, b2):
        assert be.url in page.cells
        forms = [f for f in page.forms
                 if f["hidden"].get("backend") == be.url]
        assert len(forms) == 1, page.forms
        f = forms[0]
        assert (f["method"], f["action"]) == ("post", "/ws-manager")
        assert f["hidden"]["pool"] == "/ws/"
        assert f["hidden"]["nonce"] == nonce
        assert f["hidden"]["then"] == "page"
        assert sorted(f["buttons"]) == [("action", a) for a in
                                        ("disable", "drain", "remove")]
    adds = [f for f in page.forms if f["hidden"].get("action") == "add"]
    assert len(adds) == 1
    assert adds[0]["hidden"]["pool"] == "/ws/"
    assert adds[0]["hidden"]["nonce"] == nonce
    assert adds[0]["text"] == ["backend"]


def test_names_are_escaped_in_json_and_html(env):
    """A location path with a quote, a backslash and markup comes out as
    valid JSON holding the same name, and as text in the HTML page."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    weird = '/we"ird\\<b>x/'
    start(env, [b1], extra=(
        "<Location '%s'>\n    SetHandler ws-persist\n"
        "    WSPersistBackend %s\n</Location>\n" % (weird, b2.url)))
    doc = state(env)
    assert backend_of(doc, b2.url, weird) is not None
    status, _, body = request(env, "GET")
    page = body.decode()
    assert "<b>" not in page
    assert "/we&quot;ird\\&lt;b&gt;x/" in page
    forms = Forms()
    forms.feed(page)
    assert any(f["hidden"].get("pool") == weird for f in forms.forms)


def abort(ws):
    """Reset the client's TCP connection: no close frame."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    ws.transport.abort()


def sessions(doc, name="/ws/"):
    p = pool_of(doc, name)
    return {k: p[k] for k in ("detached", "resumed", "expired")}


def page_sessions(env, name="/ws/"):
    """The figures of the line under the pool's heading on the page."""
    status, _, body = request(env, "GET")
    assert status == 200
    m = re.search(r"<h2>Pool %s</h2>\n<p class=\"pool\">Live pipes: \d+\. "
                  r"Sessions without their client: (\d+) detached now, "
                  r"(\d+) resumed, (\d+) expired\. " % re.escape(name),
                  body.decode())
    assert m, "no pool line with the session figures"
    return dict(zip(("detached", "resumed", "expired"),
                    map(int, m.groups())))


def test_detached_resumed_and_expired_sessions_are_counted(env):
    """Per pool, in the JSON and on the page's pool line: a reset client
    connection makes a detached session; its resume makes it 0 detached,
    1 resumed; a second one left past its window (1 s, in another pool)
    counts expired there. The table keeps its columns."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1], "WSPersistResumeWindow 30", extra=env.location(
        "/short/", [b2], "WSPersistResumeWindow 1"))
    cid, cid2 = new_id(), new_id()

    async def run():
        ws = await connect(env, cid)
        await echo(ws, "one")
        abort(ws)
        await await_until(lambda: sessions(state(env))["detached"] == 1, 20,
                          what="the session counted detached")
        doc = state(env)
        assert sessions(doc) == {"detached": 1, "resumed": 0, "expired": 0}
        assert pool_of(doc)["pipes"] == 1
        assert page_sessions(env) == sessions(doc)
        async with connect(env, cid, query="wsp_received=1") as ws2:
            await echo(ws2, "two")
            doc = state(env)
            assert sessions(doc) == {"detached": 0, "resumed": 1,
                                     "expired": 0}
            assert page_sessions(env) == sessions(doc)

            ws3 = await connect(env, cid2, location="/short/")
            await echo(ws3, "three")
            abort(ws3)
            await await_until(lambda: b2.closes(cid2), 20,
                              what="the backend's close after the window")
            await await_until(
                lambda: sessions(state(env), "/short/")["expired"] == 1, 20,
                what="the session counted expired")
            doc = state(env)
            assert sessions(doc, "/short/") == {"detached": 0, "resumed": 0,
                                                "expired": 1}
            assert sessions(doc) == {"detached": 0, "resumed": 1,
                                     "expired": 0}, "counted per pool"
            assert page_sessions(env, "/short/") == sessions(doc, "/short/")
        _, _, body = request(env, "GET")
        heads = re.findall(r"<tr><th>.*?</tr>", body.decode())
        assert heads and all(h.count("<th>") == 13 for h in heads), heads
    asyncio.run(run())


# --------------------------------------------------------------------------
# Actions


def test_add_backend_serves_new_clients(env):
    """A backend added at run time takes the next client (it has the
    fewest pipes), is listed as added, and the action is logged."""
    b1 = env.backend("b1")
    b2 = env.backend("b2")
    start(env, [b1])

    async def run():
        c1 = await connect(env)
        assert (await whoami(c1))["name"] == "b1"
        doc = applied(env, "add", b2.url)
        info = backend_of(doc, b2.url)
        assert info["added"] is True and info["state"] == "ok"
        assert pool_of(doc)["free_slots"] == 15
        c2 = await connect(env)
        assert (await whoami(c2))["name"] == "b2"
        assert backend_of(state(env), b2.url)["pipes"] == 1
        await echo(c1, "c1 unaffected")
        await c1.close()
        await c2.close()
    asyncio.run(run())
    assert env.httpd.log_lines(
        r"\[ws_persist:notice\].*ws_persist: manager: add %s in pool /ws/ "
        r"by 127\.0\.0\.1" % re.escape(b2.url))


def test_add_twice_or_without_slot_is_409(env):
    b1, b2 = env.backend("b1"), env.backend("b2", start=False)
    start(env, [b1], "WSPersistBackendSlots 0")
    expect_refusal(env, 409, r"%s is already a backend of pool /ws/"
                   % re.escape(b1.url), "add", b1.url, "/ws/")
    expect_refusal(env, 409, r"pool /ws/ has no free backend slot "
                   r"\(WSPersistBackendSlots 0\)", "add", b2.url, "/ws/")
    status, _, body = post(env, "add", b1.url)
    assert status == 409, body
    assert "already" in json.loads(body)["error"]
    status, _, body = post(env, "add", b2.url)
    assert status == 409, body
    assert backend_of(state(env), b2.url) is None
    assert len(env.httpd.log_lines(r"\[ws_persist:warn\].*manager: "
                                   r"refused add .* 409")) == 2


def test_disable_keeps_its_pipes_and_takes_no_new(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    backends = {"b1": b1, "b2": b2}

    async def run():
        c1 = await connect(env)
        victim = backends[(await whoami(c1))["name"]]
        doc = applied(env, "disable", victim.url)
        assert backend_of(doc, victim.url)["state"] == "disabled"
        others = [await connect(env) for _ in range(3)]
        for ws in others:
            assert (await whoami(ws))["name"] != victim.name
        assert (await whoami(c1))["name"] == victim.name, "c1 stays"
        await echo(c1, "still here")
        info = backend_of(state(env), victim.url)
        assert info["pipes"] == 1 and info["state"] == "disabled"
        assert len(victim.opens()) == 1
        for ws in [c1] + others:
            await ws.close()
    asyncio.run(run())


def test_enable_after_disable_serves_again(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])

    async def run():
        applied(env, "disable", b1.url)
        c1 = await connect(env)
        c2 = await connect(env)
        assert (await whoami(c1))["name"] == "b2"
        assert (await whoami(c2))["name"] == "b2"
        doc = applied(env, "enable", b1.url)
        assert backend_of(doc, b1.url)["state"] == "ok"
        c3 = await connect(env)
        assert (await whoami(c3))["name"] == "b1", \
            "enabled with 0 pipes against 2: it takes the next client"
        for ws in (c1, c2, c3):
            await ws.close()
    asyncio.run(run())


def test_drain_idle_backend_is_drained(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])

    async def run():
        doc = applied(env, "drain", b1.url)
        assert backend_of(doc, b1.url)["state"] == "drained"
        clients = [await connect(env) for _ in range(3)]
        for ws in clients:
            assert (await whoami(ws))["name"] == "b2"
        assert b1.opens() == []
        for ws in clients:
            await ws.close()
    asyncio.run(run())


def test_drain_moves_pipes_then_drained(env):
    """Drain a backend under a live client: new clients avoid it, the
    client's pipe moves to the other backend (it keeps its connection),
    and the backend ends drained with no pipe."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    backends = {"b1": b1, "b2": b2}

    async def run():
        c1 = await connect(env)
        victim = backends[(await whoami(c1))["name"]]
        other = b2 if victim is b1 else b1
        doc = applied(env, "drain", victim.url)
        assert backend_of(doc, victim.url)["state"] in ("draining",
                                                        "drained")
        c2 = await connect(env)
        assert (await whoami(c2))["name"] == other.name
        await await_until(
            lambda: backend_of(state(env), victim.url)["state"] == "drained",
            20, what="the drained state")
        assert backend_of(state(env), victim.url)["pipes"] == 0
        assert (await whoami(c1))["name"] == other.name
        await echo(c1, "moved, not dropped")
        await c1.close()
        await c2.close()
    asyncio.run(run())


def test_remove_idle_backend_disappears(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    doc = applied(env, "remove", b2.url)
    assert backend_of(doc, b2.url) is None
    assert backend_of(doc, b1.url) is not None
    assert backend_of(state(env), b2.url) is None


def test_remove_busy_backend_disappears_when_its_pipes_leave(env):
    """A removed backend with a pipe takes no new client and leaves the
    list once its pipe has moved or ended; the client keeps working."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    backends = {"b1": b1, "b2": b2}

    async def run():
        c1 = await connect(env)
        victim = backends[(await whoami(c1))["name"]]
        applied(env, "remove", victim.url)
        c2 = await connect(env)
        assert (await whoami(c2))["name"] != victim.name
        await await_until(
            lambda: backend_of(state(env), victim.url) is None, 20,
            what="the removed backend to leave the list")
        await echo(c1, "still served")
        await c1.close()
        await c2.close()
    asyncio.run(run())


def test_added_backend_can_be_removed_and_frees_its_slot(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1], "WSPersistBackendSlots 1")
    assert pool_of(applied(env, "add", b2.url))["free_slots"] == 0
    doc = applied(env, "remove", b2.url)
    assert backend_of(doc, b2.url) is None
    assert pool_of(doc)["free_slots"] == 1
    applied(env, "add", b2.url)


# --------------------------------------------------------------------------
# The page as an operator uses it


class Rows(HTMLParser):
    """The page's table rows as lists of cells: (class, text, buttons),
    buttons as (value, data-confirm); the result line and the meta
    refresh."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self.cell = None
        self.result = None
        self.in_result = False
        self.refresh = None
        self.hidden = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag == "td" and self.rows:
            self.cell = {"class": a.get("class", ""), "text": "",
                         "buttons": []}
            self.rows[-1].append(self.cell)
        elif tag == "button" and self.cell is not None:
            self.cell["buttons"].append((a.get("value"),
                                         a.get("data-confirm")))
        elif tag == "p" and a.get("id") == "result":
            self.result = {"class": a.get("class"), "text": ""}
            self.in_result = True
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden.append((a.get("name"), a.get("value")))

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None
        elif tag == "p":
            self.in_result = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data
        if self.in_result:
            self.result["text"] += data

    def row(self, url):
        rows = [r for r in self.rows if r and r[0]["text"] == url]
        assert len(rows) == 1, self.rows
        return rows[0]


def browse(env, path="/ws-manager"):
    """GET the page as a browser does: (status, parsed page, text)."""
    status, headers, body = request(env, "GET", path, headers={
        "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert headers["content-type"] == "text/html; charset=utf-8"
    page = Rows()
    page.feed(body.decode())
    return status, page, body.decode()


def test_page_form_redirects_to_the_page_saying_what_was_done(env):
    """A form of the page (then=page) that is applied answers 303 to the
    manager's page, which says what was done; the action took effect."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    status, headers, body = post(env, "disable", b1.url, then="page")
    assert status == 303, body
    assert headers["cache-control"] == "no-store"
    loc = headers["location"]
    assert loc.startswith("/ws-manager?"), loc
    assert b"nonce" not in body
    status, page, text = browse(env, loc)
    assert status == 200
    assert page.result == {
        "class": "done",
        "text": "Done: disable %s in pool /ws/." % b1.url}, page.result
    assert backend_of(state(env), b1.url)["state"] == "disabled"
    status, page, _ = browse(env)
    assert page.result is None, "the line is the redirect's, not the page's"


def test_page_form_asking_for_json_gets_json(env):
    """then=page does not change what a client that asks for JSON gets:
    the state document, 200, as without it."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    status, headers, body = post(env, "drain", b1.url, then="page",
                                 headers={"Accept": "application/json"})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert backend_of(json.loads(body), b1.url)["state"] == "drained"


def test_refused_page_form_answers_the_page_saying_why(env):
    """A page form the manager refuses gets the page back with the
    refusal's status and a line saying why (and logs it as any
    refusal); a script's refusal stays JSON."""
    b1 = env.backend("b1")
    start(env, [b1])
    expect_refusal(env, 409, r"%s is already a backend of pool /ws/"
                   % re.escape(b1.url), "add", b1.url, "/ws/")
    status, headers, body = post(env, "add", b1.url, then="page")
    assert status == 409
    assert headers["content-type"] == "text/html; charset=utf-8"
    page = Rows()
    page.feed(body.decode())
    assert page.result["class"] == "refused"
    assert page.result["text"] == (
        "Refused (409): %s is already a backend of pool /ws/" % b1.url)
    assert page.row(b1.url), "the page's table is there too"
    status, headers, body = post(env, "add", b1.url)
    assert status == 409
    assert headers["content-type"] == "application/json"


def test_stale_page_form_gets_a_fresh_page(env):
    """A page form with a nonce that is not the server's (a page kept
    across a restart) is refused 403 and answered with the page, whose
    forms carry the running nonce: the next click works."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    expect_refusal(env, 403, "nonce missing or wrong", "disable", b1.url,
                   "/ws/")
    status, headers, body = post(env, "disable", b1.url, nonce="stale",
                                 then="page")
    assert status == 403
    assert headers["content-type"] == "text/html; charset=utf-8"
    page = Rows()
    page.feed(body.decode())
    assert page.result["text"] == "Refused (403): nonce missing or wrong"
    assert ("nonce", state(env)["nonce"]) in page.hidden
    assert backend_of(state(env), b1.url)["state"] == "ok"


def test_done_line_cannot_carry_markup(env):
    """The line a redirect asks for shows its values as text and only
    for a known action: a crafted link adds no markup to the page."""
    b1 = env.backend("b1")
    start(env, [b1])
    status, page, text = browse(
        env, "/ws-manager?done=drain&pool=%3Cb%3Ep%3C/b%3E"
        "&backend=%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>alert" not in text and "<b>p" not in text
    assert page.result["text"] == \
        "Done: drain <script>alert(1)</script> in pool <b>p</b>."
    for action in ("%3Cb%3Ex", "explode", ""):
        _, page, text = browse(env, "/ws-manager?done=%s&pool=/ws/"
                               "&backend=x" % action)
        assert page.result is None, action


def test_rows_offer_only_the_actions_their_state_allows(env):
    """ok: drain, disable, remove; disabled: drain, enable, remove;
    drained: enable, remove. The state cell names the state in words and
    in a class the style colours."""
    b1, b2, b3 = env.backend("b1"), env.backend("b2"), env.backend("b3")
    start(env, [b1, b2, b3])
    applied(env, "disable", b2.url)
    applied(env, "drain", b3.url)
    _, page, text = browse(env)
    want = {b1.url: ("ok", ["drain", "disable", "remove"]),
            b2.url: ("disabled", ["drain", "enable", "remove"]),
            b3.url: ("drained", ["enable", "remove"])}
    for url, (word, actions) in want.items():
        row = page.row(url)
        assert row[1]["text"] == word
        assert row[1]["class"] == "state state-" + word
        assert ".state-%s{" % word in text, "a colour for " + word
        assert [v for v, _ in row[-1]["buttons"]] == actions, url


def test_remove_asks_for_confirmation(env):
    """Only remove carries a question naming the backend, and the page's
    script asks it before the form goes (the browser test clicks it)."""
    b1 = env.backend("b1")
    start(env, [b1])
    _, page, text = browse(env)
    buttons = dict(page.row(b1.url)[-1]["buttons"])
    assert buttons["remove"] == "Remove %s from pool /ws/?" % b1.url
    assert buttons["drain"] is None and buttons["disable"] is None
    assert "confirm(b.dataset.confirm)" in text


def test_page_can_reload_itself(env):
    """?refresh=N reloads the page every N s (to itself without the done
    line) and the forms keep N through their redirect; without it or with
    a bad N there is no reload, only a link to turn it on."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    _, page, text = browse(env)
    assert page.refresh is None
    assert 'href="/ws-manager?refresh=5"' in text
    _, page, _ = browse(env, "/ws-manager?refresh=7")
    assert page.refresh == "7; url=/ws-manager?refresh=7"
    assert ("refresh", "7") in page.hidden
    status, headers, _ = post(env, "disable", b1.url, then="page",
                              refresh="7")
    assert status == 303
    assert headers["location"].endswith("&refresh=7")
    for bad in ("0", "x", "99999", "5x", "-5"):
        _, page, _ = browse(env, "/ws-manager?refresh=" + bad)
        assert page.refresh is None, bad
        assert not any(n == "refresh" for n, _ in page.hidden), bad


# --------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("nonce", ["", "0" * 32, "wrong", False])
def test_wrong_or_missing_nonce_is_403(env, nonce):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    expect_refusal(env, 403, "nonce missing or wrong", "disable", b1.url,
                   "/ws/")
    status, _, body = post(env, "disable", b1.url, nonce=nonce)
    assert status == 403, body
    assert backend_of(state(env), b1.url)["state"] == "ok"
    assert env.httpd.log_lines(r"\[ws_persist:warn\].*manager: refused "
                               r"disable .* 403 nonce")


def test_nonce_off_by_one_char_is_403(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    expect_refusal(env, 403, "nonce missing or wrong", "disable", b1.url,
                   "/ws/")
    good = state(env)["nonce"]
    for bad in (good[:-1], good + "0",
                good[:-1] + ("0" if good[-1] != "0" else "1")):
        status, _, _ = post(env, "disable", b1.url, nonce=bad)
        assert status == 403
    assert backend_of(state(env), b1.url)["state"] == "ok"


@pytest.mark.parametrize("headers", [
    {"Referer": "http://evil.example/ws-manager"},
    {"Referer": "http://%s:1/ws-manager" % HOST},
    {"Referer": "not a url"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
], ids=["referer-host", "referer-port", "referer-junk", "origin-host",
        "origin-null"])
def test_foreign_referer_or_origin_is_403(env, headers):
    """Even with the right nonce: a form posted from another site."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    h = {"Referer": None, "Origin": None}
    h.update(headers)
    expect_refusal(env, 403, "%s names another host" % (
        "Referer" if "Referer" in headers else "Origin"))
    status, _, body = post(env, "disable", b1.url, headers=h)
    assert status == 403, body
    assert backend_of(state(env), b1.url)["state"] == "ok"
    assert env.httpd.log_lines(r"\[ws_persist:warn\].*manager: refused "
                               r".* 403 (Referer|Origin) names another host")


def test_without_referer_and_origin_a_script_may_post(env):
    """The control of the test above: a client that sends neither (curl,
    a script) is not refused for it."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    status, _, body = post(env, "disable", b1.url,
                           headers={"Referer": None, "Origin": None})
    assert status == 200, body
    assert backend_of(state(env), b1.url)["state"] == "disabled"


@pytest.mark.parametrize("case", [
    "unknown-pool", "unknown-backend", "unknown-action", "bad-url",
    "no-backend"])
def test_bad_action_is_400(env, case):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    before = state(env)
    args = {"unknown-pool": ("disable", b1.url, "/nope/"),
            "unknown-backend": ("disable", "ws://%s:1/echo/" % HOST, "/ws/"),
            "unknown-action": ("explode", b1.url, "/ws/"),
            "bad-url": ("add", "http://%s:1/" % HOST, "/ws/"),
            "no-backend": ("disable", "", "/ws/")}[case]
    why = {"unknown-pool": r"unknown pool '/nope/'",
           "unknown-backend": r"pool /ws/ has no backend %s" % re.escape(
               args[1]),
           "unknown-action": r"unknown action 'explode' \(add, drain, "
                             r"remove, enable or disable\)",
           "bad-url": r"backend URL '%s': scheme must be ws:// or wss://"
                      % re.escape(args[1]),
           "no-backend": r"action, pool and backend are required"}[case]
    expect_refusal(env, 400, why, *args)
    status, headers, body = post(env, args[0], args[1], pool=args[2])
    assert status == 400, body
    assert headers["content-type"] == "application/json"
    err = json.loads(body)
    assert err["status"] == 400 and err["error"]
    after = state(env)
    assert after["pools"] == before["pools"]
    assert env.httpd.log_lines(r"\[ws_persist:warn\].*manager: refused "
                               r".* 400 ")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(env, method):
    b1 = env.backend("b1")
    start(env, [b1])
    status, headers, _ = request(env, method, body=b"x")
    assert status == 405
    allow = {m.strip() for m in headers["allow"].split(",")}
    assert {"GET", "POST"} <= allow
    assert method not in allow


def test_body_over_8k_is_413(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    expect_refusal(env, 413, "body too large")
    status, _, _ = post(env, "disable", b1.url, padding="x" * 9000)
    assert status == 413
    assert backend_of(state(env), b1.url)["state"] == "ok"


def test_body_not_a_form_is_415(env):
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    expect_refusal(env, 415, "the body is not "
                   "application/x-www-form-urlencoded")
    body = json.dumps({"action": "disable", "pool": "/ws/",
                       "backend": b1.url, "nonce": state(env)["nonce"]})
    status, _, _ = request(env, "POST", body=body,
                           headers={"Content-Type": "application/json"})
    assert status == 415
    assert backend_of(state(env), b1.url)["state"] == "ok"


# --------------------------------------------------------------------------
# Every child


STATUS_TWO_CHILDREN = """\
LoadModule status_module {moddir}/mod_status.so
ExtendedStatus On
<Location "/server-status">
    SetHandler server-status
    Require ip 127.0.0.1
</Location>
KeepAlive Off
""".format(moddir=MODDIR) + TWO_CHILDREN


def answering_pid(env):
    """The pid of the child that answered a fresh connection, and whether
    the ws_persist section of its status page shows b as disabled."""
    status, _, body = request(env, "GET", "/server-status?auto")
    assert status == 200
    text = body.decode()
    pid = int(re.search(r"^WSPersistProcessPid: (\d+)$", text, re.M)
              .group(1))
    return pid, text


@pytest.mark.alarm(200)
def test_action_through_one_child_is_seen_by_every_child(env):
    """Two children: after a disable posted through one of them, fresh
    connections answered by both show the backend disabled, and no new
    client lands on it whichever child takes it."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], extra=STATUS_TWO_CHILDREN)
    wait_until(lambda: len(env.httpd.children()) >= 2, 20,
               what="two children")

    applied(env, "disable", b1.url)
    key = "WSPersistBackend[/ws/][%s]: state=" % (
        b1.url.replace(":", "%3A"))
    pids = set()
    for i in range(400):
        pid, text = answering_pid(env)
        pids.add(pid)
        line = [l for l in text.splitlines() if l.startswith(key)]
        assert line and line[0].startswith(key + "disabled "), text
        if i >= 20 and len(pids) >= 2:
            break
    assert len(pids) >= 2, "every request answered by one child: %s" % pids
    for _ in range(20):
        assert backend_of(state(env), b1.url)["state"] == "disabled"

    async def run():
        clients = [await connect(env) for _ in range(8)]
        for ws in clients:
            assert (await whoami(ws))["name"] == "b2"
        for ws in clients:
            await ws.close()
    asyncio.run(run())
    assert b1.opens() == []


# --------------------------------------------------------------------------
# Host: DNS rebinding and framing


FOREIGN = "evil.example"
# a page served as evil.example, whose name the attacker then points at
# 127.0.0.1: the browser connects to the manager's address and port and
# sends the page's own name as Host, Origin and Referer
SERVER_NAME = "ServerName admin.test\n"
ALIASES = """\
<VirtualHost *>
    ServerName admin.test
    ServerAlias ops.test *.ops.test
</VirtualHost>
"""


def foreign(env, host=FOREIGN):
    """Host, Origin and Referer of a page on host that reached the
    manager's port."""
    authority = "%s:%d" % (host, env.httpd.port)
    return {"Host": authority, "Origin": "http://" + authority,
            "Referer": "http://%s/ws-manager" % authority}


def refused_for_host(env, body, host):
    """The 421 answer and its info line, naming the client and host."""
    err = json.loads(body)
    assert err["status"] == 421 and "Host" in err["error"]
    assert "nonce" not in body.decode()
    assert env.httpd.log_lines(
        r"\[ws_persist:info\].*manager: refused a request by 127\.0\.0\.1 "
        r"for host %s: not a name of this server" % re.escape(host))


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_get_with_foreign_host_is_421(env, accept):
    """Neither the JSON nor the page (both carry the nonce) is answered
    to a request that names another host, even from 127.0.0.1."""
    b1 = env.backend("b1")
    start(env, [b1])
    h = foreign(env)
    h["Accept"] = accept
    status, headers, body = request(env, "GET", headers=h)
    assert status == 421, body
    assert headers["content-type"] == "application/json"
    refused_for_host(env, body, "%s:%d" % (FOREIGN, env.httpd.port))


@pytest.mark.parametrize("action", ["add", "disable"])
def test_post_with_foreign_host_is_421_and_changes_nothing(env, action):
    """The rebinding attack itself: the right nonce, Origin and Referer
    matching the Host, and the action is still not applied."""
    b1, b2, b3 = env.backend("b1"), env.backend("b2"), env.backend("b3")
    start(env, [b1, b2])
    before = state(env)
    url = b3.url if action == "add" else b1.url
    status, _, body = post(env, action, url, headers=foreign(env))
    assert status == 421, body
    refused_for_host(env, body, "%s:%d" % (FOREIGN, env.httpd.port))
    after = state(env)
    assert after["pools"] == before["pools"]
    assert backend_of(after, b3.url) is None
    assert backend_of(after, b1.url)["state"] == "ok"
    assert not env.httpd.log_lines(r"\[ws_persist:notice\].*manager: ")


@pytest.mark.parametrize("host", [
    "%s:{port}" % HOST, HOST, "admin.test", "admin.test:{port}",
    "Admin.TEST:{port}"],
    ids=["address-port", "address", "servername", "servername-port",
         "servername-case"])
def test_host_naming_the_server_may_get_and_post(env, host):
    """The address the connection arrived on (with or without its port)
    and the ServerName are this server: GET and POST work, with an Origin
    and Referer naming the same host."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], extra=SERVER_NAME)
    host = host.format(port=env.httpd.port)
    status, _, body = request(env, "GET", headers={
        "Host": host, "Accept": "application/json"})
    assert status == 200, body
    nonce = json.loads(body)["nonce"]
    status, _, body = post(env, "disable", b1.url, nonce=nonce, headers={
        "Host": host, "Origin": "http://" + host,
        "Referer": "http://%s/ws-manager" % host})
    assert status == 200, body
    assert backend_of(state(env), b1.url)["state"] == "disabled"


@pytest.mark.parametrize("host,ok", [
    ("ops.test", True), ("a.ops.test", True), ("admin.test", True),
    ("ops.test.evil.example", False), (FOREIGN, False),
    ("%s:1" % HOST, False)])
def test_server_alias_and_wildcards_name_the_server(env, host, ok):
    """ServerAlias names count, wildcards matched as httpd matches them;
    a name the vhost does not list, or the right address at another
    port, does not."""
    b1 = env.backend("b1")
    start(env, [b1], extra=ALIASES)
    status, _, body = request(env, "GET", headers={
        "Host": host, "Accept": "application/json"})
    assert status == (200 if ok else 421), body


def test_origin_is_compared_with_the_server_names_not_the_host(env):
    """Origin and Referer may name another of the server's names than the
    Host does (both are this server), but never a name it does not have,
    nor a port it is not reached on."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2], extra=SERVER_NAME)
    expect_refusal(env, 403, "Origin names another host")
    expect_refusal(env, 403, "Referer names another host")
    own = "admin.test:%d" % env.httpd.port
    status, _, body = post(env, "disable", b1.url, headers={
        "Origin": "http://" + own, "Referer": "http://%s/x" % own})
    assert status == 200, body
    for bad in ({"Origin": "http://admin.test:1"},
                {"Referer": "http://other.test:%d/" % env.httpd.port}):
        h = {"Origin": None, "Referer": None}
        h.update(bad)
        status, _, body = post(env, "enable", b1.url, headers=h)
        assert status == 403, body
    assert backend_of(state(env), b1.url)["state"] == "disabled"


def test_request_without_host_is_421(env):
    """HTTP/1.0 without Host names no server: refused too."""
    b1 = env.backend("b1")
    start(env, [b1])
    with socket.create_connection((HOST, env.httpd.port), timeout=30) as s:
        s.sendall(b"GET /ws-manager HTTP/1.0\r\n"
                  b"Accept: application/json\r\n\r\n")
        s.settimeout(30)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 421 "), data[:200]
    assert b"nonce" not in data


def no_framing(headers):
    assert headers.get("x-frame-options") == "DENY", headers
    assert headers.get("content-security-policy") == \
        "frame-ancestors 'none'", headers
    assert headers.get("x-content-type-options") == "nosniff", headers


@pytest.mark.parametrize("case", [
    "page", "json", "action", "host-421", "nonce-403", "method-405",
    "page-redirect", "page-refused"])
def test_every_answer_forbids_framing(env, case):
    """The page, the JSON, an applied action, the module's refusals and
    httpd's own error page for the handler all say: not in a frame."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start(env, [b1, b2])
    if case == "page":
        status, headers, _ = request(env, "GET")
        want = 200
    elif case == "json":
        status, headers, _ = request(env, "GET",
                                     headers={"Accept": "application/json"})
        want = 200
    elif case == "action":
        status, headers, _ = post(env, "disable", b1.url)
        want = 200
    elif case == "host-421":
        status, headers, _ = request(env, "GET", headers=foreign(env))
        want = 421
    elif case == "nonce-403":
        expect_refusal(env, 403, "nonce missing or wrong", "disable",
                       b1.url, "/ws/")
        status, headers, _ = post(env, "disable", b1.url, nonce="wrong")
        want = 403
    elif case == "page-redirect":
        status, headers, _ = post(env, "disable", b1.url, then="page")
        want = 303
    elif case == "page-refused":
        expect_refusal(env, 409, ".* is already a backend of pool /ws/",
                       "add", b1.url, "/ws/")
        status, headers, _ = post(env, "add", b1.url, then="page")
        want = 409
    else:
        status, headers, _ = request(env, "PUT", body=b"x")
        want = 405
    assert status == want
    no_framing(headers)
