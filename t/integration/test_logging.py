"""Log lines of a pipe go through its client's request (DESIGN §4), so a
LogLevel in the <Location> or <VirtualHost> of the request applies to
them, and each names the client id, its address and the backend."""

import asyncio

from wsp_env import connect, echo, new_id, wait_until


def test_location_loglevel_applies_to_pipe_lines(env):
    b1 = env.backend("b1")
    env.start_httpd("LogLevel warn ws_persist:info\n"
                    + env.location("/ws/", [b1], "LogLevel ws_persist:debug")
                    + env.location("/quiet/", [b1]))
    loud, quiet = new_id(), new_id()

    async def run():
        async with connect(env, loud) as ws:
            await echo(ws, "loud")
        async with connect(env, quiet, location="/quiet/") as ws:
            await echo(ws, "quiet")
    asyncio.run(run())
    # "connected (resume 0)" is a debug line of the pipe
    wait_until(lambda: env.httpd.log_lines(
        r"client %s \(127\.0\.0\.1\) backend %s: connected \(resume 0\)"
        % (loud, b1.url)), 10, what="the debug line of the /ws/ pipe")
    assert not env.httpd.log_lines(r"client %s .*connected \(resume"
                                   % quiet), \
        "a debug line where the Location's LogLevel is info"
