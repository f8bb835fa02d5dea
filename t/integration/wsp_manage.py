"""A client of the ws-persist-manager handler for tests: its config
snippet, the JSON state, and form POSTs as the HTML page sends them."""

import http.client
import json
import re
import subprocess
from urllib.parse import urlencode

from wsp_env import HOST, MODDIR

MANAGER = """\
LoadModule authz_host_module {moddir}/mod_authz_host.so
<Location "/ws-manager">
    SetHandler ws-persist-manager
    Require ip 127.0.0.1
</Location>
""".format(moddir=MODDIR)


# two children that both stay up, for tests of what the children share:
# the base config's one-child settings are overridden (the last value of
# these directives wins); few spare threads wanted, so the MPM never
# finds itself short of them
TWO_CHILDREN = """\
StartServers 2
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
MinSpareThreads 1
MaxSpareThreads 512
"""


def request(env, method, path="/ws-manager", body=None, headers=None):
    """One request on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(HOST, env.httpd.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def state(env):
    status, headers, body = request(env, "GET",
                                    headers={"Accept": "application/json"})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def pool_of(doc, name="/ws/"):
    pools = [p for p in doc["pools"] if p["name"] == name]
    assert len(pools) == 1, doc
    return pools[0]


def backend_of(doc, url, pool="/ws/"):
    """The backend's entry, or None when the pool does not list it."""
    found = [b for b in pool_of(doc, pool)["backends"] if b["url"] == url]
    assert len(found) <= 1, doc
    return found[0] if found else None


def origin(env):
    return "http://%s:%d" % (HOST, env.httpd.port)


def post(env, action, backend, pool="/ws/", nonce=None, headers=None,
         **extra):
    """POST a form as the page's forms do (with the page's Referer and
    Origin unless headers says otherwise): (status, headers, body)."""
    fields = {"action": action, "pool": pool, "backend": backend,
              "nonce": state(env)["nonce"] if nonce is None else nonce}
    fields.update(extra)
    fields = {k: v for k, v in fields.items() if v is not False}
    h = {"Content-Type": "application/x-www-form-urlencoded",
         "Referer": origin(env) + "/ws-manager", "Origin": origin(env)}
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    return request(env, "POST", body=urlencode(fields), headers=h)


def expect_refusal(env, status, why, action="-", backend="-", pool="-"):
    """The warn line of a POST the test makes the manager refuse: its
    status and why (a regex), and the action, backend and pool it names
    ("-": refused before the form was read)."""
    env.expect_warn(r"ws_persist: manager: refused %s %s in pool %s by \S+: "
                    r"%d %s(, referer: .*)?$" % (
                        re.escape(action), re.escape(backend),
                        re.escape(pool), status, why))


def applied(env, action, backend, pool="/ws/"):
    """POST an action that must be applied; the new state it answers."""
    status, headers, body = post(env, action, backend, pool)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    return json.loads(body)


def child_of(env, ws):
    """The pid of the apache2 process holding the client's connection."""
    port = ws.local_address[1]
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", "( sport = :%d and dport = "
         ":%d )" % (env.httpd.port, port)],
        stdout=subprocess.PIPE, check=True, timeout=30).stdout.decode()
    pids = set(int(x) for x in re.findall(r"pid=(\d+)", out))
    assert len(pids) == 1, "who holds port %d: %r" % (port, out)
    return pids.pop()
