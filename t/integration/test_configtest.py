"""apache2 -t (DESIGN §1): every directive rejects bad values with a
message that names the directive and the value; a Location handled by
ws-persist needs a backend; good values (with an admin's suffixes) pass."""

import asyncio

import pytest

from wsp_env import connect, echo

GOOD_BACKEND = "ws://127.0.0.1:9/echo/"


def location(*lines, backend=True):
    body = ['<Location "/ws/">', "    SetHandler ws-persist"]
    if backend:
        body.append("    WSPersistBackend " + GOOD_BACKEND)
    body += ["    " + l for l in lines]
    return "\n".join(body + ["</Location>"]) + "\n"


# (directive line, what the message must name besides the directive)
BAD = [
    ("WSPersistBufferLimit 5Q", "5Q"),
    ("WSPersistBufferLimit -5", "-5"),
    ("WSPersistMaxMessageSize 12X", "12X"),
    ("WSPersistConnectTimeout -1", "-1"),
    ("WSPersistConnectTimeout abc", "abc"),
    ("WSPersistRetry soon", "soon"),
    ("WSPersistRetry 100ms later", "later"),
    ("WSPersistMaxErrors many", "many"),
    ("WSPersistPingInterval often", "often"),
    ("WSPersistBackend http://x/", "http://x/"),
    ("WSPersistBackend ws://:0/", "ws://:0/"),
    ("WSPersistBackend ws://127.0.0.1:99999/", "ws://127.0.0.1:99999/"),
    ("WSPersistBackend ws://127.0.0.1:9/ weight=abc", "abc"),
    ("WSPersistBackend ws://chat.example:9/ resolve=500ms", "resolve=500ms"),
    ("WSPersistBackend ws://chat.example:9/ max=0", "max=0"),
    ("WSPersistBackend ws://127.0.0.1:9/ resolve=5s", "ws://127.0.0.1:9/"),
    ("WSPersistClientId somewhere", "somewhere"),
    ("WSPersistDuplicateClient ignore", "ignore"),
    ("WSPersistFailoverCodes abc", "abc"),
    ("WSPersistFailoverCodes 1001 99", "99"),
    ("WSPersistHealthCheck ping", "ping"),
    ("WSPersistHealthCheck tcp interval=soon", "interval=soon"),
    ("WSPersistResumeWindow forever", "forever"),
    ("WSPersistResumeWindow -1", "-1"),
    ("WSPersistResumeWindow 30x", "30x"),
    ("WSPersistResumeWindow 99999999999h", "99999999999h"),
    ("WSPersistResumeBuffer lots", "lots"),
    ("WSPersistResumeBuffer -5", "-5"),
    ("WSPersistResumeBuffer 256Q", "256Q"),
    ("WSPersistResumeBuffer 99999999999G", "99999999999G"),
]


@pytest.mark.parametrize("line,value", BAD, ids=[b[0] for b in BAD])
def test_bad_value_rejected(env, line, value):
    h = env.conf(location(line))
    rc, out = h.configtest()
    directive = line.split()[0]
    assert rc != 0, "configtest passed:\n" + out
    assert directive in out, out
    assert value in out, out


def test_location_without_backend_rejected(env):
    h = env.conf(location(backend=False))
    rc, out = h.configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistBackend" in out, out


def test_good_config_passes(env):
    h = env.conf(location(
        "WSPersistBackend ws://127.0.0.1:10/other/ weight=3 max_errors=5",
        "WSPersistBackend ws://chat.example:10/chat/ resolve=10s max=4",
        "WSPersistBufferLimit 5M",
        "WSPersistMaxMessageSize 64K",
        "WSPersistConnectTimeout 2s",
        "WSPersistRetry 250ms 30s",
        "WSPersistMaxErrors 10",
        "WSPersistClientId query id",
        "WSPersistDuplicateClient replace",
        "WSPersistExclusive On",
        "WSPersistPingInterval 0",
        "WSPersistFailoverCodes 1001 1006 1011 1012 4000",
        "WSPersistHealthCheck ws:/health/ interval=10s timeout=1s fails=2",
        "WSPersistResumeWindow 2m",
        "WSPersistResumeBuffer 64K"))
    rc, out = h.configtest()
    assert rc == 0, out
    assert "Syntax OK" in out


@pytest.mark.parametrize("mode", ["path", "header X-Client", "query id",
                                  "cookie sid", "generate"])
def test_client_id_modes_parse(env, mode):
    rc, out = env.conf(location("WSPersistClientId " + mode)).configtest()
    assert rc == 0, out


@pytest.mark.parametrize("line", [
    "WSPersistResumeWindow 0", "WSPersistResumeWindow 30",
    "WSPersistResumeWindow 250ms", "WSPersistResumeWindow 2s",
    "WSPersistResumeWindow 5m", "WSPersistResumeWindow 1h",
    "WSPersistResumeBuffer 0", "WSPersistResumeBuffer 4096",
    "WSPersistResumeBuffer 64K", "WSPersistResumeBuffer 512kb",
    "WSPersistResumeBuffer 1M"])
def test_resume_values_parse(env, line):
    """The resume directives take an admin's suffixes, in a Location and
    in the server config."""
    rc, out = env.conf(location(line)).configtest()
    assert rc == 0, out
    rc, out = env.conf(line + "\n" + location()).configtest()
    assert rc == 0, out


def test_server_level_backend_inherited(env):
    """A backend at server level serves a Location that only says
    SetHandler: configtest passes and the pipe works."""
    b1 = env.backend("b1")
    body = ("WSPersistBackend %s\n" % b1.url) + location(backend=False)
    h = env.conf(body)
    rc, out = h.configtest()
    assert rc == 0, out
    h.start()

    async def run():
        async with connect(env) as ws:
            await echo(ws, "inherited")
    asyncio.run(run())


def test_wss_backend_needs_mod_ssl(env):
    """wss:// is refused, not spoken in clear text, when no module offers
    TLS for outgoing connections."""
    url = "wss://127.0.0.1:9/echo/"
    h = env.conf(location("WSPersistBackend " + url))
    rc, out = h.configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistBackend" in out and url in out, out
    assert "mod_ssl" in out, out


def test_wss_backend_with_mod_ssl_passes(env):
    h = env.conf("SSLProxyEngine on\n" + location(
        "WSPersistBackend wss://127.0.0.1:9/echo/",
        "WSPersistBackend wss://backend.example/chat/ weight=2"), ssl=True)
    rc, out = h.configtest()
    assert rc == 0, out
    assert "Syntax OK" in out


def test_backend_slots_alone_do_not_hide_the_inherited_pool(env):
    """WSPersistBackendSlots sizes the pool its own section's
    WSPersistBackend lines make. In a section that has none it has no pool
    to size: configtest says so, naming the directive and the section,
    rather than passing with an empty pool that would answer 500."""
    b1 = env.backend("b1", start=False)
    body = ("WSPersistBackend %s\n" % b1.url
            + location("WSPersistBackendSlots 4", backend=False))
    rc, out = env.conf(body).configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistBackendSlots" in out and "/ws/" in out, out


def test_backend_slots_without_any_backend_rejected(env):
    """A ws-persist section with slots and no backend anywhere."""
    rc, out = env.conf(location("WSPersistBackendSlots 4",
                                backend=False)).configtest()
    assert rc != 0, "configtest passed:\n" + out
    assert "WSPersistBackend" in out and "/ws/" in out, out


def test_inner_section_without_backends_inherits_the_pool(env):
    """A section that only tunes other directives keeps the pool of the
    enclosing context, and a section's WSPersistBackendSlots sizes its
    own pool whether it comes before or after the backend lines."""
    from wsp_manage import MANAGER, pool_of, state
    b1, b2 = env.backend("b1"), env.backend("b2")
    body = ("WSPersistBackend %s\n" % b1.url + MANAGER
            + location("WSPersistBufferLimit 64K", backend=False)
            + '<Location "/two/">\n    SetHandler ws-persist\n'
            "    WSPersistBackendSlots 3\n"
            "    WSPersistBackend %s\n</Location>\n" % b2.url)
    h = env.conf(body)
    rc, out = h.configtest()
    assert rc == 0, out
    h.start()

    async def run():
        async with connect(env) as ws:
            await echo(ws, "inherited")
        async with connect(env, location="/two/") as ws:
            await echo(ws, "own pool")
    asyncio.run(run())
    doc = state(env)
    assert pool_of(doc, "/two/")["free_slots"] == 3, doc
    assert pool_of(doc, "(server)")["free_slots"] == 16, doc
