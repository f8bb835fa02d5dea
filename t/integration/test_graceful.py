"""apachectl -k graceful (issue #3): pipes in old children keep working
until they end; new children use the new configuration; a backend that
stays keeps its shared state (back-off, counters)."""

import asyncio
import re
import signal
import socket

from wsp_env import HOST, await_until, connect, echo, wait_until, whoami
from wsp_manage import MANAGER, backend_of, expect_refusal, state

# room for a new generation's child beside the old one
SLOTS = """\
StartServers 1
ServerLimit 4
ThreadsPerChild 16
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 512
"""


def generations(env):
    return len(env.httpd.log_lines(r"resuming normal operations"))


def graceful(env, body):
    before = generations(env)
    env.httpd.write_conf(SLOTS + MANAGER + body)
    env.httpd.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: generations(env) > before, 30,
               what="the graceful restart")


def test_graceful_restart_keeps_pipes_and_state(env):
    with socket.socket() as s:
        s.bind((HOST, 0))
        dead = "ws://%s:%d/echo/" % (HOST, s.getsockname()[1])
    b1, b3 = env.backend("b1"), env.backend("b3")
    opts = ("WSPersistRetry 120s 120s", "WSPersistConnectTimeout 5")
    env.start_httpd(SLOTS + MANAGER + env.location("/ws/", [dead, b1], *opts))
    env.expect_refused(dead)                # once (asserted below)

    async def run():
        old = [await connect(env) for _ in range(2)]
        for ws in old:
            assert (await whoami(ws))["name"] == "b1"
        before = state(env)
        assert backend_of(before, dead)["errors"] == 1
        served = backend_of(before, b1.url)["served"]
        old_pids = set(env.httpd.children())

        # the new configuration adds b3 and keeps dead and b1
        graceful(env, env.location("/ws/", [dead, b1, b3], *opts))
        for i, ws in enumerate(old):
            await echo(ws, "after the restart %d" % i)
            assert (await whoami(ws))["name"] == "b1"

        await await_until(lambda: set(env.httpd.children()) - old_pids, 20,
                          what="a child of the new generation")
        new = []
        for _ in range(4):
            ws = await connect(env)
            new.append((await whoami(ws))["name"])
            await ws.close()
        assert "b3" in new, "the new configuration's backend serves: %r" % new
        doc = state(env)
        assert backend_of(doc, dead)["errors"] == 1, \
            "the back-off carried over: nobody tried the dead backend again"
        assert backend_of(doc, b1.url)["served"] >= served
        tries = env.httpd.log_lines(r"backend %s: (cannot connect|handshake "
                                    r"failed)" % re.escape(dead))
        assert len(tries) == 1, tries

        for ws in old:
            await ws.close()
        # the old generation's child leaves once its pipes ended
        await await_until(lambda: not (set(env.httpd.children()) & old_pids),
                          30, what="the old child to exit")
        doc = state(env)
        assert backend_of(doc, b1.url)["pipes"] == 0, doc
    asyncio.run(run())


def test_graceful_restart_retires_dropped_backends_and_runtime_changes(env):
    """A backend the new configuration drops keeps the old child's pipe
    but serves no new client; what the manager changed (a backend added,
    one disabled) lasts until the restart."""
    from wsp_manage import applied
    b1, b2, b3 = env.backend("b1"), env.backend("b2"), env.backend("b3")
    env.start_httpd(SLOTS + MANAGER + env.location("/ws/", [b1, b2]))

    async def run():
        applied(env, "disable", b2.url)
        old = await connect(env)
        assert (await whoami(old))["name"] == "b1"
        applied(env, "add", b3.url)
        assert backend_of(state(env), b3.url)["added"] is True

        # the new configuration has b2 only: b1 is dropped, b3 was added
        # at run time, b2's disable was a run-time change
        graceful(env, env.location("/ws/", [b2]))
        await echo(old, "the dropped backend's pipe still works")
        assert (await whoami(old))["name"] == "b1"
        doc = state(env)
        assert backend_of(doc, b1.url) is None, doc
        assert backend_of(doc, b3.url) is None, doc
        assert backend_of(doc, b2.url)["state"] == "ok", doc
        for _ in range(4):
            ws = await connect(env)
            assert (await whoami(ws))["name"] == "b2"
            await ws.close()
        await old.close()
    asyncio.run(run())


def test_graceful_restart_gives_a_new_nonce(env):
    """The manager's nonce belongs to one generation: a form read before
    a graceful restart is refused after it, the new nonce is accepted."""
    from wsp_manage import post
    b1, b2 = env.backend("b1"), env.backend("b2")
    body = env.location("/ws/", [b1, b2])
    env.start_httpd(SLOTS + MANAGER + body)
    old = state(env)["nonce"]
    expect_refusal(env, 403, "nonce missing or wrong", "enable", b2.url,
                   "/ws/")
    status, _, reply = post(env, "disable", b2.url, nonce=old)
    assert status == 200, reply

    graceful(env, body)
    new = state(env)["nonce"]
    assert new != old
    status, _, reply = post(env, "enable", b2.url, nonce=old)
    assert status == 403, reply
    assert env.httpd.log_lines(r"manager: refused enable .* 403 nonce")
    status, _, reply = post(env, "disable", b2.url, nonce=new)
    assert status == 200, reply


def test_graceful_restart_while_the_lock_is_held(env):
    """A graceful restart while the shared state's lock stays taken (a
    child stopped or died in it): the parent does not hang; the new
    generation gets a lock and shared memory of its own and serves."""
    from test_shared_state import flock_mutex, holding_the_lock
    b1 = env.backend("b1")
    body = flock_mutex(env) + env.location("/ws/", [b1])
    env.start_httpd(SLOTS + MANAGER + body)
    old_pids = set(env.httpd.children())

    async def run():
        with holding_the_lock(env):
            env.expect_error(r"the ws-persist-shm lock stayed taken")
            graceful(env, body)
            await await_until(lambda: set(env.httpd.children()) - old_pids,
                              20, what="a child of the new generation")
            async with connect(env) as ws:
                await echo(ws, "served with the new generation's lock")
                assert state(env)["pools"][0]["pipes"] == 1
    asyncio.run(run())
