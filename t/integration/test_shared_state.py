"""Backend state shared by all children (issue #3): with two children, an
exclusive backend is taken once for the whole server, and a backend one
child saw fail is backed off for the other child too."""

import asyncio
import contextlib
import fcntl
import os
import random
import re
import signal

import pytest

from wsp_env import HOST, await_until, connect, rejected, wait_until, whoami
from wsp_manage import MANAGER, TWO_CHILDREN, backend_of, child_of, state

def start_two(env, body):
    env.start_httpd(TWO_CHILDREN + MANAGER + body)
    wait_until(lambda: len(env.httpd.children()) == 2, 20,
               what="two apache2 children")


async def client_in_other_child(env, pid, tries=200):
    """A client whose connection another child than pid accepted. Which
    child accepts is the kernel's choice, and one child can win many
    times in a row (seen under ASan): tries come at random moments."""
    for _ in range(tries):
        ws = await connect(env)
        await whoami(ws)
        if child_of(env, ws) != pid:
            return ws
        await ws.close()
        await await_until(lambda: state(env)["pools"][0]["pipes"] <= 1, 10,
                          what="the extra pipe to end")
        await asyncio.sleep(random.random() * 0.05)
    raise AssertionError("%d connections all went to child %d"
                         % (tries, pid))


def test_mutex_directive_names_the_shared_state_lock(env):
    """The lock is registered as "ws-persist-shm": the Mutex directive
    accepts that name (and httpd refuses names nobody registered)."""
    b1 = env.backend("b1", start=False)
    env.conf("Mutex sysvsem ws-persist-shm\n" + env.location("/ws/", [b1]))
    rc, out = env.httpd.configtest()
    assert rc == 0, out
    env.conf("Mutex sysvsem ws-persist-other\n"
             + env.location("/ws/", [b1]))
    rc, out = env.httpd.configtest()
    assert rc != 0 and "ws-persist-other" in out, out


@pytest.mark.parametrize("mutex", ["default", "sysvsem", "posixsem"])
def test_exclusive_across_children(env, mutex):
    """Two clients in two different children hold the two backends; a
    third client gets 503 whichever child takes it, with the lock
    mechanism the Mutex directive chose."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start_two(env, "Mutex %s ws-persist-shm\n" % mutex
              + env.location("/ws/", [b1, b2], "WSPersistExclusive On",
                             "WSPersistConnectTimeout 1"))

    async def run():
        c1 = await connect(env)
        n1 = (await whoami(c1))["name"]
        pid1 = child_of(env, c1)
        c2 = await client_in_other_child(env, pid1)
        n2 = (await whoami(c2))["name"]
        assert {n1, n2} == {"b1", "b2"}, \
            "each child took the backend the other left free"
        env.expect_error("no backend completed a handshake")
        for _ in range(6):
            e = await rejected(env)
            assert e.status_code == 503
        doc = state(env)
        assert backend_of(doc, b1.url)["pipes"] == 1
        assert backend_of(doc, b2.url)["pipes"] == 1
        assert len(b1.opens()) + len(b2.opens()) >= 2
        await c1.close()
        await await_until(lambda: backend_of(state(env), b1.url)["pipes"]
                          + backend_of(state(env), b2.url)["pipes"] == 1,
                          10, what="c1's pipe to end")
        c3 = await connect(env)
        assert (await whoami(c3))["name"] == n1, \
            "the backend c1 left serves the next client, in any child"
        await c2.close()
        await c3.close()
    asyncio.run(run())


def test_backoff_seen_by_all_children(env):
    """A dead backend fails once: the back-off one child started keeps
    the other child from trying it while clients land in both."""
    with __import__("socket").socket() as s:
        s.bind((HOST, 0))
        dead = "ws://%s:%d/echo/" % (HOST, s.getsockname()[1])
    b2 = env.backend("b2")
    start_two(env, env.location("/ws/", [dead, b2],
                                "WSPersistRetry 120s 120s",
                                "WSPersistConnectTimeout 5"))
    env.expect_refused(dead)                # once (asserted below)

    async def run():
        clients, per_child = [], {}
        for _ in range(60):
            ws = await connect(env)
            assert (await whoami(ws))["name"] == "b2"
            pid = child_of(env, ws)
            per_child[pid] = per_child.get(pid, 0) + 1
            clients.append(ws)
            if len(per_child) == 2 and min(per_child.values()) >= 3:
                break
        assert len(per_child) == 2 and min(per_child.values()) >= 3, \
            "clients in both children: %r" % per_child
        tries = env.httpd.log_lines(r"backend %s: (cannot connect|"
                                    r"handshake failed)" % re.escape(dead))
        assert len(tries) == 1, "the dead backend was tried %d times:\n%s" % (
            len(tries), "\n".join(tries))
        info = backend_of(state(env), dead)
        assert info["state"] == "error" and info["errors"] == 1, info
        for ws in clients:
            await ws.close()
    asyncio.run(run())


@pytest.mark.parametrize("mutex", ["default", "posixsem"])
def test_pipes_of_a_killed_child_are_counted_out(env, mutex):
    """A child killed with its pipes open cannot release them: the parent
    marks its row and the other child counts them out, so an exclusive
    backend it held serves again."""
    b1, b2 = env.backend("b1"), env.backend("b2")
    start_two(env, "Mutex %s ws-persist-shm\n" % mutex
              + env.location("/ws/", [b1, b2], "WSPersistExclusive On",
                             "WSPersistConnectTimeout 2"))

    async def run():
        c1 = await connect(env)
        n1 = (await whoami(c1))["name"]
        pid1 = child_of(env, c1)
        c2 = await client_in_other_child(env, pid1)
        env.expected_kills.add(pid1)
        os.kill(pid1, signal.SIGKILL)
        held = {"b1": b1, "b2": b2}[n1]
        await await_until(lambda: backend_of(state(env), held.url)["pipes"]
                          == 0, 20, what="the dead child's pipe counted out")
        c3 = await connect(env)
        assert (await whoami(c3))["name"] == n1
        await c2.close()
        await c3.close()
    asyncio.run(run())


# The lock as a file the test can flock too, to stand for a child that
# stopped inside it, or died there with a mechanism that never frees a
# dead holder's lock (posixsem). In a folder the children can reach.
def flock_mutex(env):
    return "Mutex flock:%s ws-persist-shm\n" % env.shared()


@contextlib.contextmanager
def holding_the_lock(env):
    """The ws-persist-shm lock held by the test (Mutex flock only)."""
    path = os.path.join(env.shared(),
                        "ws-persist-shm.%d" % env.httpd.proc.pid)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_parent_does_not_wait_for_a_lock_a_child_holds(env):
    """A child dies while the lock is held by someone who will not give it
    back soon: the parent still reaps it and starts the next child (it
    only marks the dead child's row). Once the lock is free, the next
    holder counts the dead child's pipe out."""
    b1 = env.backend("b1")
    env.start_httpd(flock_mutex(env) + MANAGER + env.location("/ws/", [b1]))
    wait_until(lambda: len(env.httpd.children()) == 1, 20,
               what="the apache2 child")

    async def run():
        ws = await connect(env)
        await whoami(ws)
        assert state(env)["pools"][0]["pipes"] == 1
        pid = child_of(env, ws)
        with holding_the_lock(env):
            env.expected_kills.add(pid)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: [c for c in env.httpd.children() if c != pid],
                       30, what="the parent to start a child while the lock "
                       "is held")
        await await_until(lambda: state(env)["pools"][0]["pipes"] == 0, 20,
                          what="the dead child's pipe counted out")
        async with connect(env) as again:
            await whoami(again)
    asyncio.run(run())
