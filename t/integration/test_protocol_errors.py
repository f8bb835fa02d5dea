"""Client frames that break RFC 6455 end the client connection with 1002
(1009 for a message over WSPersistMaxMessageSize) and nothing of them
reaches the backend (DESIGN §3). Hand-built frames on a raw socket, after
a successful upgrade and one good echo (the control)."""

import pytest

from wsp_env import RawWS, build_frame, close_payload, new_id, wait_until

T, B, C, CLOSE, PING = (RawWS.OP_TEXT, RawWS.OP_BINARY, RawWS.OP_CONT,
                        RawWS.OP_CLOSE, RawWS.OP_PING)

MAX_MESSAGE = 1024


@pytest.fixture
def proxy(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location(
        "/ws/", [b1], "WSPersistMaxMessageSize %d" % MAX_MESSAGE))
    return b1


def provoke(env, backend, bad, expect_code):
    """bad(marker) -> the bytes to send. Checks the close code the client
    gets and that the backend never saw the marker."""
    cid = new_id()
    marker = "MARK-" + cid
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
        ws.send(T, "good-" + cid)
        assert ws.recv_frame()[2:] == (T, ("good-" + cid).encode())
        ws.send_raw(bad(marker))
        code, reason, before = ws.recv_close()
        data = [f for f in before if f[2] in (C, T, B)]
        assert not data, "data frames before the close: %r" % data
        assert code == expect_code, \
            "expected close %d, got %s %r" % (expect_code, code, reason)
        try:
            ws.send(CLOSE, close_payload(expect_code))
        except OSError:
            pass
    finally:
        ws.close()
    # the pipe ends: the backend connection is closed, then look at what
    # it received
    wait_until(lambda: backend.closes(cid), 20,
               what="the backend connection of %s to close" % cid)
    got = [m["head"] for m in backend.messages(cid)]
    assert got == ["good-" + cid], "the backend received %r" % got
    assert not backend.saw(marker)


def m(s):
    return s.encode()


CASES_1002 = {
    "unmasked": lambda mk: build_frame(T, mk, mask=False),
    "rsv1": lambda mk: build_frame(T, mk, rsv=4),
    "rsv2": lambda mk: build_frame(T, mk, rsv=2),
    "rsv3": lambda mk: build_frame(T, mk, rsv=1),
    "opcode-3": lambda mk: build_frame(3, mk),
    "opcode-7": lambda mk: build_frame(7, mk),
    "opcode-0xB": lambda mk: build_frame(0xB, mk),
    "opcode-0xF": lambda mk: build_frame(0xF, mk),
    "fragmented-ping": lambda mk: build_frame(PING, mk, fin=False),
    "ping-126-bytes": lambda mk: build_frame(PING, mk.ljust(126, "p")),
    "close-126-bytes": lambda mk: build_frame(
        CLOSE, close_payload(1000, mk.ljust(124, "c"))),
    "continuation-without-start": lambda mk: build_frame(C, mk),
    "text-inside-fragmented": lambda mk: (
        build_frame(T, mk + "-part1", fin=False) + build_frame(T, mk)),
    "binary-inside-fragmented": lambda mk: (
        build_frame(B, mk + "-part1", fin=False) + build_frame(B, mk)),
    "close-1-byte": lambda mk: build_frame(CLOSE, b"\x03"),
}
for _code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000):
    CASES_1002["close-code-%d" % _code] = (
        lambda mk, c=_code: build_frame(CLOSE, close_payload(c, "x")))


@pytest.mark.parametrize("case", sorted(CASES_1002))
def test_protocol_error_1002(env, proxy, case):
    provoke(env, proxy, CASES_1002[case], 1002)


CASES_1009 = {
    "text": lambda mk: build_frame(T, mk.ljust(MAX_MESSAGE + 1, "t")),
    "binary": lambda mk: build_frame(B, m(mk).ljust(2 * MAX_MESSAGE, b"b")),
    "fragments": lambda mk: b"".join(
        [build_frame(T, mk.ljust(400, "f"), fin=False),
         build_frame(C, "f" * 400, fin=False),
         build_frame(C, "f" * 400, fin=True)]),
}


# an endless message of empty fragments costs no payload, but its frame
# headers count toward the cap (DESIGN §8)
CASES_1009["empty-fragments"] = lambda mk: b"".join(
    [build_frame(T, mk, fin=False)] + [build_frame(C, b"", fin=False)] * 3000)


@pytest.mark.parametrize("case", sorted(CASES_1009))
def test_message_too_big_1009(env, proxy, case):
    provoke(env, proxy, CASES_1009[case], 1009)


def test_message_at_limit_passes(env, proxy):
    """The control for 1009: a message of exactly the limit is relayed."""
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
        msg = ("limit-" + cid).ljust(MAX_MESSAGE, "z")
        ws.send(T, msg)
        assert ws.recv_frame()[2:] == (T, msg.encode())
    finally:
        ws.close()


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 3000,
                                  4999])
def test_valid_close_codes_accepted(env, proxy, code):
    """The control for the bad close codes: a valid code gets a normal close
    (the same code back, not 1002) and reaches the backend."""
    cid = new_id()
    ws = RawWS(env.httpd.port, "/ws/" + cid)
    try:
        assert ws.handshake().status == 101
        ws.send(T, "hi")
        assert ws.recv_frame()[2:] == (T, b"hi")
        ws.send(CLOSE, close_payload(code, "bye"))
        got, _, _ = ws.recv_close()
        assert got == code
    finally:
        ws.close()
    closes = wait_until(lambda: proxy.closes(cid), 20, what="backend close")
    assert closes[0]["code"] == code


CASES_1007 = {
    "byte-ff": b"\xff",
    "overlong-slash": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "truncated": b"ok \xe2\x82",
    "over-10ffff": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize("case", sorted(CASES_1007))
def test_close_reason_not_utf8_1007(env, proxy, case):
    """A close frame whose reason is not UTF-8 gets 1007 (RFC 6455
    5.5.1, 8.1) and is not relayed."""
    provoke(env, proxy, lambda mk: build_frame(
        CLOSE, close_payload(1000, CASES_1007[case])), 1007)
