"""wss:// clients through mod_ssl (DESIGN §4: the client hop goes through
httpd's connection filters)."""

import asyncio
import os
import ssl

from wsp_env import HOST, connect, echo, hget, whoami


def test_wss_client_echo_and_forwarded_proto(env):
    b1 = env.backend("b1")
    env.start_httpd(env.location("/ws/", [b1]), ssl=True)
    ctx = ssl.create_default_context(cafile=str(env.make_cert()))

    async def run():
        async with connect(env, scheme="wss", ssl=ctx) as ws:
            await echo(ws, "over tls")
            await echo(ws, os.urandom(200000))
            h = (await whoami(ws))["headers"]
            assert hget(h, "X-Forwarded-Proto") == "https"
            assert hget(h, "X-Forwarded-Host") == \
                "%s:%d" % (HOST, env.httpd.ssl_port)
        # the plain listener of the same server still says http
        async with connect(env) as ws:
            h = (await whoami(ws))["headers"]
            assert hget(h, "X-Forwarded-Proto") == "http"
    asyncio.run(run())
