"""The sanitizer run of the integration suite (make test SANITIZE=1).

The Makefile builds the module with gcc's -fsanitize=address,undefined and
sets WSP_SANITIZE=1, WSP_MODULE (that build) and WSP_ASAN_PRELOAD (the
libasan.so gcc links against). apache2 itself is not instrumented, so the
ASan runtime must be the first library of the process: LD_PRELOAD. The
UBSan runtime comes in as the module's own dependency.

ASAN_OPTIONS:
- detect_leaks=0: httpd frees most memory by destroying pools, and a child
  leaves its process pool, its threads' pools and every allocator's free
  list to exit(); LeakSanitizer would report all of that at every child's
  exit, none of it ours to fix. Memory growth is what the hostile-client
  tests measure instead (RSS before and after).
- log_path: reports go to files (asan.PID, ubsan.PID) in a folder the
  children (www-data) may write, because their stderr is httpd's error
  log at best. The check_error_log fixture fails a test when one appears,
  or when a report shows in the error log (UBSan's do, hosted by ASan's
  runtime).
- halt_on_error / -fno-sanitize-recover: the first report ends the
  child, so a bug cannot hide behind the next request.

Limits: APR pools hand out memory from 8 KB blocks that ASan sees as one
allocation each, so an overflow inside a pool block is not caught; the
stack, globals and the malloc'd edges of blocks, buckets and ibufs are.
"""

import os
import re
import subprocess
from pathlib import Path

ENABLED = os.environ.get("WSP_SANITIZE") == "1"
PRELOAD = os.environ.get("WSP_ASAN_PRELOAD", "")
REPO = Path(__file__).resolve().parents[2]


def report_dir(shared):
    d = Path(shared) / "sanitizer"
    if not d.exists():
        d.mkdir()
        os.chmod(d, 0o777)
    return d


def environ(shared):
    """The environment apache2 runs in: os.environ, plus the sanitizer
    runtime and its options when enabled."""
    env = dict(os.environ)
    if not ENABLED:
        return env
    if not PRELOAD or not os.path.exists(PRELOAD):
        raise AssertionError("WSP_SANITIZE=1 but WSP_ASAN_PRELOAD (%r) is "
                             "not a file" % PRELOAD)
    d = report_dir(shared)
    env["LD_PRELOAD"] = PRELOAD
    env["ASAN_OPTIONS"] = ":".join([
        "detect_leaks=0", "halt_on_error=1", "abort_on_error=0",
        "disable_coredump=1", "detect_stack_use_after_return=0",
        "log_path=%s/asan" % d])
    env["UBSAN_OPTIONS"] = ":".join([
        "print_stacktrace=1", "halt_on_error=1",
        "log_path=%s/ubsan" % d])
    return env


# The first line of a report, wherever it went: UBSan's, when ASan's
# runtime hosts it, ignore UBSAN_OPTIONS' log_path and go to stderr, which
# is httpd's error log.
REPORT_RE = re.compile(r"ERROR: AddressSanitizer|runtime error:|"
                       r"SUMMARY: (AddressSanitizer|UndefinedBehavior"
                       r"Sanitizer)")


FRAME_RE = re.compile(r"\((/\S+\.so)\+(0x[0-9a-f]+)\)")


def symbolize(text):
    """Module frames the children could not symbolize (they cannot read
    the module's copy in pytest's private folder) get function, file and
    line from addr2line, run here as the test's user."""
    def one(m):
        try:
            p = subprocess.run(["addr2line", "-f", "-C", "-e", m.group(1),
                                m.group(2)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=30)
            func, where = (p.stdout.decode(errors="replace").splitlines()
                           + ["?", "?"])[:2]
        except (OSError, subprocess.TimeoutExpired):
            return m.group(0)
        return "%s in %s %s" % (m.group(0), func,
                                where.replace(str(REPO) + "/", ""))
    return FRAME_RE.sub(one, text)


def reports(shared, log_text=""):
    """The text of every sanitizer report written so far (the files are
    then removed, so each is reported once), and the error log's lines
    around any report printed there."""
    if not ENABLED:
        return []
    out = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if REPORT_RE.search(line):
            out.append("sanitizer report in the error log:\n"
                       + "\n".join(lines[max(0, i - 2):i + 20]))
            break
    if shared is None:
        return out
    d = Path(shared) / "sanitizer"
    if d.exists():
        for f in sorted(d.iterdir()):
            out.append("sanitizer report %s:\n%s" % (
                f.name, symbolize(f.read_text(errors="replace")[:20000])))
            f.unlink()
    return out
