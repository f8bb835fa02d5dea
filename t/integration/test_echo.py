"""Messages of every length class come back byte-exact; fragmented client
messages come back whole (DESIGN §3)."""

import asyncio
import base64
import os

import pytest

from wsp_env import RawWS, connect, echo, new_id, recv

# 0, 7-bit, the 7/16-bit and 16/64-bit length boundaries, 1 MB, 3 MB.
SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 3 << 20]


@pytest.fixture
def proxy(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]))
    return b1


def make(kind, n):
    if kind == "binary":
        return os.urandom(n)
    return base64.b64encode(os.urandom(n))[:n].decode()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_echo_size(env, proxy, kind, n):
    async def run():
        async with connect(env) as ws:
            await echo(ws, make(kind, n), timeout=60)
            # the stream stays framed correctly after a message of this size
            await echo(ws, make(kind, 3))
    asyncio.run(run())


def test_echo_multibyte_utf8(env, proxy):
    text = ("ascii é ß € 𝄞 中文 " * 5000)

    async def run():
        async with connect(env) as ws:
            await echo(ws, text)
    asyncio.run(run())


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_fragmented_message_comes_back_whole(env, proxy, kind):
    frags = [make(kind, n) for n in (1, 0, 125, 70000, 3)]
    whole = frags[0][:0].join(frags)

    async def run():
        async with connect(env) as ws:
            await ws.send(frags)          # one frame per fragment
            got = await recv(ws)
            assert type(got) is type(whole) and got == whole
            await echo(ws, make(kind, 10))
    asyncio.run(run())


def test_raw_fragments_with_ping_between(env, proxy):
    """Fragments built by hand, a ping between two of them: the proxy
    answers the ping and the message arrives whole, once."""
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
        ws.send(RawWS.OP_TEXT, "frag-one|", fin=False)
        ws.send(RawWS.OP_PING, "are-you-there")
        ws.send(RawWS.OP_CONT, "frag-two|", fin=False)
        ws.send(RawWS.OP_CONT, "frag-three", fin=True)
        frames = [ws.recv_frame(), ws.recv_frame()]
        assert None not in frames
        by_op = {f[2]: f for f in frames}
        assert set(by_op) == {RawWS.OP_PONG, RawWS.OP_TEXT}, frames
        assert by_op[RawWS.OP_PONG][3] == b"are-you-there"
        fin, rsv, op, payload = by_op[RawWS.OP_TEXT]
        assert fin and rsv == 0
        assert payload == b"frag-one|frag-two|frag-three"
        ws.send(RawWS.OP_TEXT, "next")
        assert ws.recv_frame()[2:] == (RawWS.OP_TEXT, b"next")
        msgs = [m["head"] for m in proxy.messages(cid)]
        assert msgs == ["frag-one|frag-two|frag-three", "next"]
    finally:
        ws.close()
