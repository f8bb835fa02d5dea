"""Backends named by host name (DESIGN §8: no loop thread ever does a
blocking lookup). apache2 runs in a mount namespace of its own whose
/etc/resolv.conf names the test's DNS server (wsp_dns.py), which answers
the test's names after a delay the test sets and counts the queries.
Each child's resolver thread looks the names up; connects only copy what
it found."""

import asyncio
import re
import signal

import pytest

from wsp_dns import (DnsServer, HostBackend, dns_skip_reason, use_dns,
                     wait_queries)
from wsp_env import (HOST, await_until, connect, echo, hget, wait_until,
                     whoami)
from wsp_manage import MANAGER, applied, backend_of, pool_of, state
from test_drain import check_stream, stream

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



# ---- a name whose every address is a member (resolve=, max=) ------------

FAST = ("WSPersistConnectTimeout 10", "WSPersistRetry 50ms 500ms")


def member(name, port, ip):
    """A member's URL as the manager, mod_status and the logs name it."""
    return "ws://%s:%d/echo/ (%s)" % (name, port, ip)


def members_of(env, name, port):
    """{address: entry} of the manager's members of the name's line."""
    prefix = "ws://%s:%d/echo/ (" % (name, port)
    return {b["url"][len(prefix):-1]: b
            for b in pool_of(state(env))["backends"]
            if b["url"].startswith(prefix)}


def wait_members(env, name, port, ips, timeout=15):
    wait_until(lambda: sorted(members_of(env, name, port)) == sorted(ips),
               timeout, interval=0.1,
               what="members %s of %s" % (sorted(ips), name))


def start_members(env, dns, name, ips, opts="resolve=1s", *lines, extra=""):
    """Backends on each of ips (127.0.0.x), one port, all named name;
    httpd with the manager and one line for the name."""
    port = env.port()
    dns.set(name, list(ips))
    bes = {ip: HostBackend(env, "m" + ip.rsplit(".", 1)[1], port, ip,
                           name).start() for ip in ips}
    env.start_httpd(extra + MANAGER + env.location(
        "/ws/", ["ws://%s:%d/echo/ %s" % (name, port, opts)], *FAST,
        *lines))
    wait_members(env, name, port, ips)
    return port, bes


async def spread(env, n):
    """n clients; {backend name: [clients]}."""
    on = {}
    for _ in range(n):
        ws = await connect(env)
        on.setdefault((await whoami(ws))["name"], []).append(ws)
    return on


def test_each_address_is_a_member(env, dns):
    """A name with two A records: each address is a member of the pool,
    listed as "URL (address)" with its own state; new pipes spread over
    both, and the Host header they send is the name."""
    name = "chat.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"])
    ms = members_of(env, name, port)
    assert all(b["state"] == "ok" and b["pipes"] == 0 for b in ms.values())

    async def run():
        on = await spread(env, 6)
        assert sorted(on) == ["m2", "m3"] and all(
            len(c) == 3 for c in on.values()), on
        info = await whoami(on["m3"][0])
        assert hget(info["headers"], "Host") == "%s:%d" % (name, port)
        ms = members_of(env, name, port)
        assert [ms[ip]["pipes"] for ip in sorted(ms)] == [3, 3], ms
        for c in on.values():
            for ws in c:
                await echo(ws, "hello")
                await ws.close()
    asyncio.run(run())
    assert env.httpd.log_lines(r"pool /ws/: backend %s joins: an address "
                               r"of %s" % (re.escape(member(name, port,
                                                            "127.0.0.3")),
                                           name))


def test_dropped_address_member_leaves(env, dns):
    """One address leaves the DNS answer: after the resolve period its
    member takes no new pipe, its clients move to the other member while
    they stream (nothing lost, nothing twice) and it leaves the pool."""
    name = "shrink.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"])

    async def run():
        on = await spread(env, 4)
        assert sorted(on) == ["m2", "m3"], on
        flags, sent, got = {}, [], []
        moving = on["m3"][0]

        async def director():
            await await_until(lambda: len(got) >= 20, 20,
                              what="echoes before the change")
            dns.set(name, ["127.0.0.2"])
            await await_until(lambda: "127.0.0.3" not in members_of(
                env, name, port), 15, interval=0.1,
                what="the member of 127.0.0.3 to leave")
            await asyncio.sleep(0.3)
            flags["stop"] = True

        await asyncio.wait_for(asyncio.gather(
            director(), stream(moving, lambda: "stop" in flags, sent,
                               got)), 60)
        check_stream(sent, got)
        for ws in on["m3"] + on["m2"]:
            assert (await whoami(ws))["name"] == "m2"
        closes = bes["127.0.0.3"].closes()
        assert closes and all(c["code"] == 1001 for c in closes), closes
        more = await spread(env, 3)
        assert list(more) == ["m2"], "a new pipe went to the leaver"
        for c in list(on.values()) + list(more.values()):
            for ws in c:
                await ws.close()
    asyncio.run(run())
    assert env.httpd.log_lines(r"backend %s leaves: %s no longer has its "
                               r"address" % (re.escape(member(
                                   name, port, "127.0.0.3")), name))


def test_new_address_becomes_member(env, dns):
    """An address added to the answer becomes a member after the resolve
    period and gets new pipes."""
    name = "grow.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2"])
    late = HostBackend(env, "m4", port, "127.0.0.4", name).start()

    async def run():
        on = await spread(env, 2)
        assert list(on) == ["m2"], on
        dns.set(name, ["127.0.0.2", "127.0.0.4"])
        wait_members(env, name, port, ["127.0.0.2", "127.0.0.4"])
        more = await spread(env, 2)
        assert more.get("m4") and len(more["m4"]) == 2, more
        for c in list(on.values()) + list(more.values()):
            for ws in c:
                await ws.close()
    asyncio.run(run())
    assert len(late.opens()) == 2


def test_killed_member_fails_alone(env, dns):
    """One member's backend dies: only that member errs, its clients fail
    over to the other member, the other member's clients keep their
    connections."""
    name = "half.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"])
    dead = member(name, port, "127.0.0.3")
    env.expect_failover(backend=dead)
    env.expect_refused(dead)

    async def run():
        on = await spread(env, 4)
        before = [(await whoami(ws))["conn"] for ws in on["m2"]]
        bes["127.0.0.3"].kill()
        for ws in on["m3"]:
            await echo(ws, "across the kill", timeout=30)
            assert (await whoami(ws))["name"] == "m2"
        after = [(await whoami(ws))["conn"] for ws in on["m2"]]
        assert before == after, "the live member's clients were moved"
        ms = members_of(env, name, port)
        assert ms["127.0.0.2"]["state"] == "ok", ms
        assert ms["127.0.0.3"]["state"] == "error", ms
        assert ms["127.0.0.3"]["errors"] >= 1
        assert ms["127.0.0.2"]["errors"] == 0
        for c in on.values():
            for ws in c:
                await ws.close()
    asyncio.run(run())


def test_resolve_option_per_backend(env, dns):
    """resolve= sets the period of its line's name: looked up every
    second while the server's WSPersistResolveInterval is an hour, which
    another name keeps."""
    fast, slow = "fast.wsp.test", "slow.wsp.test"
    port = env.port()
    dns.set(fast, HOST)
    dns.set(slow, HOST)
    env.start_httpd("WSPersistResolveInterval 1h\n" + env.location(
        "/ws/", ["ws://%s:%d/echo/ resolve=1s" % (fast, port),
                 "ws://%s:%d/echo/" % (slow, port)]))
    wait_queries(dns, slow, 1)
    n = wait_queries(dns, fast, 4, timeout=20)
    assert dns.count(slow) == 1, "the other name was looked up again"
    assert n >= 4


def test_more_addresses_than_max_capped(env, dns):
    """An answer with more addresses than max= makes max members, and
    the rest is logged once, however often the name is looked up."""
    name = "many.wsp.test"
    port = env.port()
    ips = ["127.0.1.%d" % i for i in range(1, 21)]
    dns.set(name, ips)
    env.start_httpd(MANAGER + env.location(
        "/ws/", ["ws://%s:%d/echo/ resolve=1s max=3" % (name, port)]))
    line = (r"ws_persist: pool /ws/: backend host %s has 20 addresses, "
            r"more than max=3 of ws://%s:%d/echo/: 17 not used "
            r"\(127\.0\.1\.4 127\.0\.1\.5 (\S+ ){5}127\.0\.1\.11 \.\.\.\)$"
            % (name, name, port))
    env.expect_warn(line)
    wait_members(env, name, port, ips[:3])
    n = dns.count(name)
    dns.set(name, ips + ["127.0.1.21"])     # changed, still over
    wait_queries(dns, name, n + 3, timeout=20)
    assert sorted(members_of(env, name, port)) == sorted(ips[:3])
    assert len(env.httpd.log_lines(r"backend host %s has \d+ addresses"
                                   % name)) == 1


BAD_BACKEND_OPTS = ["resolve=0", "resolve=500ms", "resolve=abc", "max=0",
                    "max=abc", "max=100000", "resolve="]


@pytest.mark.parametrize("opt", BAD_BACKEND_OPTS)
def test_bad_backend_resolve_options_rejected(env, opt):
    """Bad resolve= and max= values fail configtest, naming the
    directive and the value."""
    httpd = env.conf(env.location("/ws/", ["ws://chat.wsp.test:9/echo/ "
                                           + opt]))
    rc, out = httpd.configtest()
    assert rc != 0, out
    assert "WSPersistBackend" in out and opt in out, out


def test_resolve_option_needs_a_name(env):
    httpd = env.conf(env.location("/ws/", ["ws://127.0.0.1:9/echo/ "
                                           "resolve=5s"]))
    rc, out = httpd.configtest()
    assert rc != 0 and "resolve= and max= are for a host name" in out, out


@pytest.mark.parametrize("opts", ["resolve=30s", "resolve=5s max=4",
                                  "max=2", "weight=2 resolve=1min"])
def test_good_backend_resolve_options_pass(env, opts):
    httpd = env.conf(env.location("/ws/", ["ws://chat.wsp.test:9/echo/ "
                                           + opts]))
    rc, out = httpd.configtest()
    assert rc == 0, out


def test_members_checked_each(env, dns):
    """WSPersistHealthCheck checks each member on its own address: the
    member whose backend dies fails its check and is taken out, the other
    passes, and new clients all go to it."""
    name = "checked.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"],
                              "resolve=1s",
                              "WSPersistHealthCheck tcp interval=200ms "
                              "timeout=200ms")
    dead = member(name, port, "127.0.0.3")
    wait_until(lambda: all(b["check"] and b["check"]["result"] == "pass"
                           for b in members_of(env, name, port).values()),
               what="both members' first checks")
    env.expect_warn(r"ws_persist: health check \(tcp\) of backend %s in "
                    r"pool /ws/ failed: connect: Connection refused; taken "
                    r"out until it passes$" % re.escape(dead))
    bes["127.0.0.3"].kill()
    wait_until(lambda: members_of(env, name, port)["127.0.0.3"]["check"]
               ["result"] == "fail", what="the dead member's check failing")
    ms = members_of(env, name, port)
    assert ms["127.0.0.3"]["state"] == "error", ms
    assert ms["127.0.0.2"]["state"] == "ok", ms
    assert ms["127.0.0.2"]["check"]["result"] == "pass", ms

    async def run():
        on = await spread(env, 3)
        assert list(on) == ["m2"], on
        for ws in on["m2"]:
            await ws.close()
    asyncio.run(run())


def test_members_in_mod_status(env, dns):
    """mod_status's ?auto lists each member under its "URL (address)"."""
    from test_status import STATUS, auto, backend_line
    name = "shown.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"],
                              extra=STATUS)

    async def run():
        on = await spread(env, 2)
        lines = auto(env)
        for ip in ("127.0.0.2", "127.0.0.3"):
            f = backend_line(lines, member(name, port, ip))
            assert f["state"] == "ok" and f["pipes"] == 1, f
        for c in on.values():
            for ws in c:
                await ws.close()
    asyncio.run(run())


def test_members_kept_across_graceful_restart(env, dns):
    """A graceful restart keeps the members of a line that stays, with
    their counters and the pipes on them."""
    from test_graceful import SLOTS, generations
    name = "kept.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"],
                              extra=SLOTS)

    async def run():
        on = await spread(env, 2)
        before = generations(env)
        env.httpd.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: generations(env) > before, 30,
                   what="the graceful restart")
        ms = members_of(env, name, port)
        assert sorted(ms) == ["127.0.0.2", "127.0.0.3"], ms
        assert [ms[ip]["served"] for ip in sorted(ms)] == [1, 1], ms
        for c in on.values():
            for ws in c:
                await echo(ws, "after the restart")
                await ws.close()
    asyncio.run(run())


def test_member_drained_by_name(env, dns):
    """The manager's actions take a member by its "URL (address)": a
    drained member's clients move to the other member."""
    name = "managed.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"])
    gone = member(name, port, "127.0.0.3")

    async def run():
        on = await spread(env, 2)
        applied(env, "drain", gone)
        await await_until(lambda: backend_of(state(env), gone)["state"]
                          == "drained", 15, what="the member drained")
        for ws in on["m3"]:
            assert (await whoami(ws))["name"] == "m2"
        for c in on.values():
            for ws in c:
                await ws.close()
    asyncio.run(run())


def test_two_children_agree_on_members(env, dns):
    """Two children, each with its resolver, see one set of members in
    the shared memory: no address twice, and a dropped address leaves
    once for both."""
    from wsp_manage import TWO_CHILDREN
    name = "shared.wsp.test"
    port, bes = start_members(env, dns, name, ["127.0.0.2", "127.0.0.3"],
                              extra=TWO_CHILDREN)
    wait_until(lambda: len(env.httpd.children()) == 2,
               what="two children")
    prefix = "ws://%s:%d/echo/ (" % (name, port)

    def urls():
        return sorted(b["url"] for b in pool_of(state(env))["backends"]
                      if b["url"].startswith(prefix))

    wait_queries(dns, name, 2)          # both children looked it up
    assert urls() == [member(name, port, "127.0.0.2"),
                      member(name, port, "127.0.0.3")]
    dns.set(name, ["127.0.0.2"])
    wait_until(lambda: urls() == [member(name, port, "127.0.0.2")], 15,
               interval=0.1, what="the dropped address's member to leave")
    n = dns.count(name)
    wait_queries(dns, name, n + 4)      # both children looked again
    assert urls() == [member(name, port, "127.0.0.2")]
    assert len(env.httpd.log_lines(r"backend %s leaves" % re.escape(
        member(name, port, "127.0.0.3")))) == 1
