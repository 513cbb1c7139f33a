"""Who changed a watched file, on the on-call's screens of a real daemon: as root with fanotify the page names the
process the test ran (its pid, command name, user and program), and where the daemon cannot listen (in a user
namespace fanotify_init is refused, as it is to any daemon without CAP_SYS_ADMIN) the page says the writer is
unknown and why, never a made-up name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mevwatch.collectors._integrity_writers import UNSET_UID, WriterLog, user_name
from tests.support.daemon import RunningDaemon
from tests.support.screens import pager_alerts_config, screens_agree
from tests.support.webhook import WebhookReceiver

SYSTEM_PYTHON = "/usr/bin/python3"  # one that another user (nobody) may run
NOBODY = 65534
# appends through a descriptor it was handed (nobody cannot reach the test's directory), under a command name
# of its own, and stays alive until the test has read the page
_WRITER = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"mev-tamper", 0, 0, 0)  # PR_SET_NAME
fd = int(sys.argv[1])
os.write(fd, b"withdraw_to: 0x000000000000000000000000000000000000dEaD\\n")
os.close(fd)
print("written", flush=True)
sys.stdin.read()
"""


def _fanotify_here() -> bool:
    """Whether a root process of this host may listen with fanotify, as the daemon will try to."""
    log = WriterLog()
    try:
        return log.open()
    finally:
        log.close()


def _expected_writer(pid: int) -> str:
    login_uid = int(Path("/proc/self/loginuid").read_text())  # the writer inherits it
    login = f", login uid {login_uid} ({user_name(login_uid)})" if login_uid != UNSET_UID else ""
    return f"pid {pid} (mev-tamper), uid {NOBODY} (nobody){login}, {os.path.realpath(SYSTEM_PYTHON)}"


@pytest.mark.parametrize("listening", ["fanotify", "refused"])
def test_the_page_names_the_process_that_wrote_the_file(tmp_path: Path, listening: str) -> None:
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root (to listen, and to run the writer as nobody) and a system python")
    wrap: list[str] = []
    if listening == "refused":
        unshare = shutil.which("unshare")
        if unshare is None or subprocess.run([unshare, "--user", "--map-root-user", "true"]).returncode != 0:
            pytest.skip("no user namespaces here")
        wrap = [unshare, "--user", "--map-root-user"]  # root in the namespace, no CAP_SYS_ADMIN over the host
    named = listening == "fanotify" and _fanotify_here()
    watched = tmp_path / "etc-mev"
    watched.mkdir()
    config = watched / "config.yaml"
    config.write_text("strategy: conservative\n")
    collectors = (f"collectors:\n  - integrity: {{interval: 1s, files: ['{config}'], auto_baseline: true,"
                  f" debounce: 20ms, audit_log: '{tmp_path}/no-audit.log'}}\n")
    hook = WebhookReceiver().start()
    daemon = RunningDaemon(tmp_path, collectors + pager_alerts_config(hook))
    daemon.argv[:0] = wrap  # started on entering
    try:
        with daemon as d:
            d.wait_value("mevwatch_integrity_files_watched", 1)
            fd = os.open(config, os.O_WRONLY | os.O_APPEND)
            try:
                writer = subprocess.Popen([SYSTEM_PYTHON, "-c", _WRITER, str(fd)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, pass_fds=(fd,), user=NOBODY, group=NOBODY,
                                          extra_groups=[])
            finally:
                os.close(fd)
            try:
                assert writer.stdout is not None
                assert writer.stdout.readline() == b"written\n"
                seen = screens_agree(d, hook, "IntegrityViolation", path=str(config))
            finally:
                assert writer.stdin is not None
                writer.stdin.close()
                writer.wait(timeout=10)
    finally:
        hook.stop()
    summary = seen.page["annotations"]["summary"]
    said = summary.split(", last written by ", 1)[1]
    if named:
        assert said == _expected_writer(writer.pid), summary
    else:
        assert said == "unknown (no audit log)", summary
    assert seen.row.count(said) == 1  # the landing page names it too
