import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsp_env  # noqa: E402
from wsp_env import Env  # noqa: E402

# Last resort against a hang: no test of this suite needs this long.
TEST_ALARM_S = 240


class HangGuardExpired(BaseException):
    """The hang guard's alarm. Not a TimeoutError (asyncio.TimeoutError
    is TimeoutError since Python 3.11, and a test's "except
    asyncio.TimeoutError" would swallow it and assert over partial data)
    and not an Exception at all, so no handler of a test catches it: the
    test fails here, with this message."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "alarm(seconds): override the per-test hang guard")


@pytest.fixture(scope="session", autouse=True)
def module_snapshot(tmp_path_factory):
    """One build for the whole run: a copy of the module taken at the
    start, so a rebuild while the suite runs cannot mix two builds."""
    if not wsp_env.MODULE.exists():
        pytest.exit("%s is not built (make -f Makefile.apxs)"
                    % wsp_env.MODULE, returncode=2)
    copy = tmp_path_factory.mktemp("module") / wsp_env.MODULE.name
    shutil.copy2(wsp_env.MODULE, copy)
    os.chmod(copy.parent, 0o755)
    orig, wsp_env.MODULE = wsp_env.MODULE, copy
    yield
    wsp_env.MODULE = orig


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path / "root")
    yield e
    e.shutdown()    # idempotent; check_error_log did it already
    e.cleanup()


@pytest.fixture(autouse=True)
def check_error_log(request, env):
    """Fail a test whose httpd logged an unexpected error/crit/alert/emerg
    line (a test declares its expected ones with env.expect_error()) or
    an unexpected ws_persist warn line (env.expect_warn()), whose
    child crashed ("child pid N exit signal"), or whose httpd did not stop.
    Runs after the test has stopped httpd, so shutdown is checked too."""
    yield
    problems = env.shutdown()
    problems += env.log_problems()
    if problems:
        pytest.fail("after the test:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def hang_guard(request):
    m = request.node.get_closest_marker("alarm")
    seconds = m.args[0] if m else TEST_ALARM_S

    def on_alarm(signum, frame):
        raise HangGuardExpired("test still running after %ds" % seconds)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
