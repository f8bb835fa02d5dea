"""Backends named by host name (DESIGN §8: no loop thread ever does a
blocking lookup). apache2 runs in a mount namespace of its own whose
/etc/resolv.conf names the test's DNS server (wsp_dns.py), which answers
the test's names after a delay the test sets and counts the queries.
Each child's resolver thread looks the names up; connects only copy what
it found."""

import asyncio
import re

import pytest

from wsp_dns import (DnsServer, HostBackend, dns_skip_reason, use_dns,
                     wait_queries)
from wsp_env import HOST, await_until, connect, echo, wait_until, whoami
from wsp_manage import MANAGER, applied, backend_of, state

_skip = []


def _skip_reason():
    if not _skip:
        _skip.append(dns_skip_reason())
    return _skip[0]


@pytest.fixture
def dns(env, monkeypatch):
    reason = _skip_reason()
    if reason:
        pytest.skip("apache2 cannot get a resolv.conf of its own: " + reason)
    d = DnsServer()
    use_dns(env, d, monkeypatch)
    yield d
    env.shutdown()      # before its name server goes away
    d.close()


def test_host_named_backend_echoes(env, dns):
    """(a) A backend given by a host name that only the test's DNS server
    knows: the proxy resolves it and echoes go through end to end."""
    name = "echo.wsp.test"
    dns.set(name, HOST)
    b = HostBackend(env, "named", env.port(), dns_name=name).start()
    env.start_httpd(env.location("/ws/", [b]))

    async def run():
        async with connect(env) as ws:
            assert (await whoami(ws))["name"] == "named"
            await echo(ws, "hello")
            await echo(ws, b"\x00\x01binary")
    asyncio.run(run())
    assert dns.count(name) >= 1, "the name was looked up by DNS"
    assert len(b.opens()) == 1


def test_numeric_backend_never_looked_up(env, dns):
    """A numeric backend address is parsed, never sent to DNS."""
    b = env.backend("numeric")
    env.start_httpd(env.location("/ws/", [b]))

    async def run():
        for _ in range(3):
            async with connect(env) as ws:
                await echo(ws, "hello")
    asyncio.run(run())
    assert dns.total() == 0, "DNS queries: %r" % dns.queries


@pytest.mark.alarm(200)
def test_slow_lookup_does_not_stall_the_loop(env, dns):
    """(b) Every lookup takes 300 ms. 100 pipes fail over at once to a
    host-named backend while a client of another location on the same
    (single) loop thread echoes every 20 ms: its echoes keep coming. A
    lookup per connect in the loop thread stalled it ~300 ms per pipe."""
    name = "spare.wsp.test"
    dns.set(name, HOST)
    dns.delay = 0.3
    first, steady_be = env.backend("first"), env.backend("steady")
    # not listening yet: the pipes all start on "first"
    spare = HostBackend(env, "spare", env.port(), dns_name=name)
    env.start_httpd(
        "WSPersistEventLoopThreads 1\n"
        + env.location("/dns/", [first, spare.url + " max_errors=1000000"],
                       "WSPersistRetry 50ms 200ms",
                       "WSPersistConnectTimeout 30")
        + env.location("/steady/", [steady_be]))
    env.expect_failover(backend=first)      # its 100 pipes
    env.expect_refused(spare)               # while it does not listen

    async def run():
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(20)

        async def open_one():
            async with sem:
                return await connect(env, location="/dns/")

        pipes = await asyncio.gather(*(open_one() for _ in range(100)))
        await await_until(lambda: len(first.opens()) == 100, 30,
                          what="100 pipes on the first backend")
        await spare.astart()
        await asyncio.sleep(0.5)            # its back-off is over
        steady = await connect(env, location="/steady/")
        stamps, state = [], {}

        async def sampler():
            n = 0
            while "done" not in state:
                n += 1
                await echo(steady, "tick-%d" % n, timeout=60)
                stamps.append(loop.time())
                await asyncio.sleep(0.02)

        async def failover():
            await await_until(lambda: len(stamps) >= 10, 30,
                              what="steady echoes before the kill")
            state["kill"] = loop.time()
            first.kill()
            await await_until(lambda: len(spare.opens()) >= 100, 60,
                              interval=0.1, what="100 pipes on the spare")
            state["moved"] = loop.time()
            await asyncio.sleep(0.5)
            state["done"] = True

        await asyncio.gather(sampler(), failover())
        during = [t for t in stamps if t >= state["kill"]]
        gaps = [b - a for a, b in zip([state["kill"]] + during, during)]
        worst = max(gaps)
        print("steady client: %d echoes, longest wait %.3fs, while 100 "
              "pipes failed over in %.2fs; %d DNS queries for %s"
              % (len(during), worst, state["moved"] - state["kill"],
                 dns.count(name), name))
        assert len(during) >= 10, "echoes during the failover: %d" % len(
            during)
        assert worst < 1.0, ("the steady client waited %.2fs for an echo "
                             "while 100 pipes failed over (over %.2fs)"
                             % (worst, state["moved"] - state["kill"]))
        await asyncio.gather(*(echo(ws, "after") for ws in pipes))
        await asyncio.gather(*(ws.close() for ws in pipes + [steady]))
    asyncio.run(run())


def test_new_address_found_after_refresh(env, dns):
    """(c) The name moves to another address (a redeploy) while the old
    backend still runs: after WSPersistResolveInterval a new pipe reaches
    the backend at the new address."""
    name = "moving.wsp.test"
    port = env.port()
    dns.set(name, "127.0.0.1")
    old = HostBackend(env, "old", port, "127.0.0.1", name).start()
    new = HostBackend(env, "new", port, "127.0.0.2", name).start()
    env.start_httpd("WSPersistResolveInterval 1s\n"
                    + env.location("/ws/", [old]))

    async def name_of_new_pipe():
        async with connect(env) as ws:
            return (await whoami(ws))["name"]

    async def run():
        assert await name_of_new_pipe() == "old"
        dns.set(name, "127.0.0.2")
        seen = []

        async def reached_new():
            seen.append(await name_of_new_pipe())
            return seen[-1] == "new"

        deadline = asyncio.get_running_loop().time() + 15
        while not await reached_new():
            assert asyncio.get_running_loop().time() < deadline, \
                "no new pipe reached 127.0.0.2 within 15 s: %r" % seen
            await asyncio.sleep(0.2)
    asyncio.run(run())
    assert old.alive, "found by the refresh, not by a failure"
    assert env.httpd.log_lines(r"backend host %s is 127\.0\.0\.2, was "
                               r"127\.0\.0\.1" % name)


def test_failed_connect_refreshes_early(env, dns):
    """A redeploy that kills the old address: with a refresh interval of
    an hour, the failed connects to the old address ask for a lookup and
    the pipe fails over to the new address at once."""
    name = "redeployed.wsp.test"
    port = env.port()
    dns.set(name, "127.0.0.1")
    old = HostBackend(env, "old", port, "127.0.0.1", name).start()
    new = HostBackend(env, "new", port, "127.0.0.2", name).start()
    env.start_httpd("WSPersistResolveInterval 1h\n"
                    + env.location("/ws/", [old], "WSPersistRetry 50ms 200ms",
                                   "WSPersistConnectTimeout 20"))
    env.expect_failover(backend=old)
    env.expect_refused(old)         # the old address, until the lookup

    async def run():
        async with connect(env) as ws:
            assert (await whoami(ws))["name"] == "old"
            dns.set(name, "127.0.0.2")
            old.kill()
            await echo(ws, "across the redeploy", timeout=30)
            assert (await whoami(ws))["name"] == "new"
    asyncio.run(run())
    assert len(new.opens()) == 1


def test_unresolvable_name_fails_with_the_resolver_error(env, dns):
    """A backend whose name does not resolve counts as a failed backend
    with the resolver's error logged; the pool's other backend serves."""
    name = "nowhere.wsp.test"
    good = env.backend("good")
    env.start_httpd(env.location(
        "/ws/", ["ws://%s:%d/echo/" % (name, env.port()), good],
        "WSPersistRetry 50ms 200ms"))
    env.expect_warn(r"ws_persist: cannot resolve backend host %s$"
                    % re.escape(name))
    env.expect_warn(r"ws_persist: client \S+ \(\S+\) backend ws://%s:\d+"
                    r"/echo/: cannot connect$" % re.escape(name))

    wait_until(lambda: env.httpd.log_lines("cannot resolve backend host %s"
                                           % name),
               what="the resolver's warning")

    async def run():
        for _ in range(4):
            async with connect(env) as ws:
                assert (await whoami(ws))["name"] == "good"
            await asyncio.sleep(0.3)        # past the failed one's back-off
    asyncio.run(run())
    assert dns.count(name) >= 1
    assert env.httpd.log_lines(r"%s: does not resolve" % name), \
        "the failed attempt says why"


def test_added_host_named_backend_resolved(env, dns):
    """A backend the manager adds by host name is learnt by the child's
    resolver: while its first lookup (300 ms) is under way it is not tried
    (so not counted as failed), then it takes new pipes."""
    name = "added.wsp.test"
    dns.set(name, HOST)
    dns.delay = 0.3
    b1 = env.backend("b1")
    b2 = HostBackend(env, "b2", env.port(), dns_name=name).start()
    env.start_httpd(MANAGER + env.location("/ws/", [b1]))

    async def run():
        c1 = await connect(env)
        applied(env, "add", b2.url)
        # this connect makes the child see the new backend: its name is
        # learnt, its lookup begins
        c2 = await connect(env)
        assert (await whoami(c2))["name"] == "b1"
        wait_queries(dns, name, 1)
        await asyncio.sleep(0.6)
        c3 = await connect(env)
        assert (await whoami(c3))["name"] == "b2"
        info = backend_of(state(env), b2.url)
        assert info["errors"] == 0 and info["served"] == 1, info
        await asyncio.gather(*(ws.close() for ws in (c1, c2, c3)))
    asyncio.run(run())


BAD_INTERVALS = ["0", "500ms", "abc", "-1", "30q"]


@pytest.mark.parametrize("value", BAD_INTERVALS)
def test_bad_resolve_interval_rejected(env, value):
    """WSPersistResolveInterval rejects what is not a time of at least 1s
    at configtest, naming the directive and the value."""
    httpd = env.conf("WSPersistResolveInterval %s\n" % value
                     + env.location("/ws/", ["ws://127.0.0.1:9/echo/"]))
    rc, out = httpd.configtest()
    assert rc != 0, out
    assert "WSPersistResolveInterval" in out and value in out, out


def test_resolve_interval_is_server_wide(env):
    """Inside a <Location> it is refused: one resolver serves the child."""
    httpd = env.conf(env.location("/ws/", ["ws://127.0.0.1:9/echo/"],
                                  "WSPersistResolveInterval 5s"))
    rc, out = httpd.configtest()
    assert rc != 0 and "WSPersistResolveInterval" in out, out


@pytest.mark.parametrize("value", ["1s", "2", "90s", "5min", "1h"])
def test_good_resolve_interval_passes(env, value):
    httpd = env.conf("WSPersistResolveInterval %s\n" % value
                     + env.location("/ws/", ["ws://127.0.0.1:9/echo/"]))
    rc, out = httpd.configtest()
    assert rc == 0, out

