"""The writer of a change, from a real audit daemon: ``sed -i`` by another user is named on the page
with its login uid and program, live and after a restart; and the audit log parser agrees with
auparse (Debian's python3-audit, the audit project's own parser) on real and generated logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.aio import wait_for
from mevwatch.collectors._integrity_audit import AuditLog, AuditTarget, parse_events
from mevwatch.collectors._integrity_writers import user_name
from tests.integration.test_integrity_real import SYSTEM_PYTHON, Harness, _changed
from tests.support.peers import missing, need_binary, need_root

FIXTURE = Path(__file__).parents[1] / "fixtures" / "audit" / "sed-i.log"
_KEY = "mevwatch-test"

_AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_group = root
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 8
num_logs = 2
max_log_file_action = ROTATE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
plugin_dir = {plugins}
q_depth = 2000
overflow_action = IGNORE
"""


def _status(auditctl: str) -> dict[str, str]:
    out = subprocess.run([auditctl, "-s"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        pytest.skip(f"no audit support in this kernel: {out.stderr.strip()}")
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


@contextlib.contextmanager
def audit_daemon(tmp: Path, watch: Path) -> Iterator[Path]:
    """auditd on a private config and log, with a watch on ``watch``; all undone on exit."""
    need_root()
    auditd, auditctl = need_binary("auditd"), need_binary("auditctl")
    before = _status(auditctl)
    if before.get("pid", "0") != "0":
        pytest.skip("an audit daemon already runs on this host; a test must not take its place")
    if before.get("enabled") == "2":
        pytest.skip("audit configuration is locked (enabled 2)")
    conf, log = tmp / "auditd", tmp / "audit-log" / "audit.log"
    for d in (conf, conf / "plugins", log.parent):
        d.mkdir(parents=True)
    (conf / "auditd.conf").write_text(_AUDITD_CONF.format(log=log, plugins=conf / "plugins"))
    with open(tmp / "auditd.out", "wb") as out:
        proc = subprocess.Popen([auditd, "-n", "-s", "nochange", "-c", str(conf)], stdout=out, stderr=out,
                                start_new_session=True)
    added = False
    try:
        deadline = time.monotonic() + 10
        while _status(auditctl).get("pid") != str(proc.pid):
            assert proc.poll() is None, (tmp / "auditd.out").read_text()
            assert time.monotonic() < deadline, "auditd did not register with the kernel in 10 s"
            time.sleep(0.05)
        subprocess.run([auditctl, "-w", str(watch), "-p", "wa", "-k", _KEY], check=True, timeout=10)
        added = True
        subprocess.run([auditctl, "-e", "1"], check=True, timeout=10, capture_output=True)
        yield log
    finally:
        if added:
            subprocess.run([auditctl, "-W", str(watch), "-p", "wa", "-k", _KEY], timeout=10)
        subprocess.run([auditctl, "-e", before.get("enabled", "0")], timeout=10, capture_output=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A watched tree another user (nobody) can reach and write in: sed -i makes its file beside the old."""
    top = Path(tempfile.mkdtemp(prefix="mevwatch-audit-"))
    try:
        top.chmod(0o755)
        root = top / "etc-mev"
        root.mkdir()
        root.chmod(0o777)
        (root / "config.yaml").write_text("strategy: arbitrage\nmin_profit: 0.01\n")
        (root / "wallets.json").write_text('{"hot": "0xabc"}\n')
        yield root
    finally:
        shutil.rmtree(top)


async def _sed_as(login_uid: int, expr: str, path: Path) -> int:
    """``sed -i`` run by nobody from a login session of ``login_uid``; its pid, once it has exited."""
    setpriv = need_binary("setpriv")
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f'echo {login_uid} > /proc/self/loginuid && exec "$@"', "sh",
        setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/sed", "-i", expr, str(path),
        stderr=subprocess.PIPE)
    _, err = await wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    return proc.pid


def _page_writer(pid: int, login_uid: int) -> str:
    return f"pid {pid} (sed), uid 65534 (nobody), login uid {login_uid} ({user_name(login_uid)}), /usr/bin/sed"


async def test_sed_by_another_user_is_named_with_its_login_and_program(shared_tree: Path, tmp_path: Path) -> None:
    cfg, wallets = shared_tree / "config.yaml", shared_tree / "wallets.json"
    with audit_daemon(tmp_path, shared_tree) as log:
        h = Harness(shared_tree, tmp_path / "state", audit_log=str(log))
        h.baseline()
        await h.start()
        try:
            pid = await _sed_as(1000, "s/arbitrage/drain-everything/", cfg)
            await h.wait(lambda: _changed(h, cfg) is not None, 10.0, "the change")
            labels = _changed(h, cfg)
            assert labels is not None
            assert labels["kinds"] == "content,owner,inode"  # the new file is nobody's
            assert labels["writer"] == _page_writer(pid, 1000), labels
            # the audit log holds the rename: the page can name sed however late fanotify's event is read
            ev = AuditLog(str(log)).find([AuditTarget(str(cfg))])[str(cfg)]
            assert (ev.pid, ev.comm, ev.uid, ev.login_uid) == (pid, "sed", 65534, 1000)
        finally:
            await h.stop()
        # changed while the daemon was down: fanotify saw nothing, the audit log still tells
        pid2 = await _sed_as(1001, "s/0xabc/0xdef/", wallets)
        h2 = Harness(shared_tree, tmp_path / "state", audit_log=str(log))
        await h2.start()
        try:
            await h2.wait(lambda: _changed(h2, wallets) is not None, 10.0, "the change seen at start")
            assert (_changed(h2, wallets) or {})["writer"] == _page_writer(pid2, 1001)
            assert (_changed(h2, cfg) or {})["writer"] == _page_writer(pid, 1000)
        finally:
            await h2.stop()


# --- the parser against auparse ------------------------------------------------------------------

_AUPARSE_DUMP = """
import auparse, json, sys
au = auparse.AuParser(auparse.AUSOURCE_FILE, sys.argv[1])
au.set_escape_mode(auparse.AUPARSE_ESC_RAW)
out = []
while au.parse_next_event():
    ts = au.get_timestamp()
    ev = {"serial": ts.serial, "ms": ts.sec * 1000 + ts.milli, "items": []}
    au.first_record()
    while True:
        kind = au.get_type_name()
        fields = {}
        au.first_field()
        while True:
            name = au.get_field_name()
            if name not in fields:
                raw = au.get_field_str()
                fields[name] = au.interpret_field() if name in ("name", "comm", "exe", "cwd") else raw
            if not au.next_field():
                break
        if kind == "SYSCALL":
            ev.update(pid=fields["pid"], uid=fields["uid"], auid=fields["auid"], comm=fields["comm"], exe=fields["exe"])
        elif kind == "CWD":
            ev["cwd"] = fields["cwd"]
        elif kind == "PATH":
            ev["items"].append([fields["name"], fields["inode"], fields["dev"], fields["nametype"]])
        if not au.next_record():
            break
    if "pid" in ev:
        out.append(ev)
print(json.dumps(out))
"""


def _untrusted(rng: random.Random, value: str) -> str:
    """A string as the kernel logs it (audit_log_untrustedstring): quoted, or hex when it must be."""
    data = value.encode()
    if any(b == 0x22 or b < 0x21 or b > 0x7E for b in data) or (rng.random() < 0.05 and data):
        if not any(b == 0x22 or b < 0x21 or b > 0x7E for b in data):
            return f'"{value}"'
        return data.hex().upper()
    return f'"{value}"'


def _generated_log(rng: random.Random, events: int) -> str:
    alphabet = "abcXYZ019._-/= \"'\té€€ü\\$*"
    lines = []
    t = 1796411300.0
    for serial in range(1000, 1000 + events):
        t += rng.random()
        stamp = f"audit({int(t)}.{int(t * 1000) % 1000:03d}:{serial})"
        comm = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 15)))
        exe = "/usr/bin/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20)))
        cwd = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        auid = rng.choice(["4294967295", "1000", str(rng.randrange(0, 70000))])
        enriched = '\x1dARCH=x86_64 SYSCALL=rename AUID="x" UID="y"' if rng.random() < 0.5 else ""
        items = rng.randrange(0, 4)
        lines.append(f"type=SYSCALL msg={stamp}: arch=c000003e syscall=82 success={rng.choice(['yes', 'no'])} "
                     f"exit=0 a0=1 a1=2 items={items} ppid=1 pid={rng.randrange(1, 4 << 20)} auid={auid} "
                     f"uid={rng.randrange(0, 70000)} gid=0 tty=(none) ses=4294967295 comm={_untrusted(rng, comm)} "
                     f"exe={_untrusted(rng, exe)} key={rng.choice(['(null)', chr(34) + _KEY + chr(34)])}{enriched}")
        lines.append(f"type=CWD msg={stamp}: cwd={_untrusted(rng, cwd)}")
        for item in range(items):
            name = rng.choice([
                "(null)",
                _untrusted(rng, "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))),
            ])
            lines.append(f"type=PATH msg={stamp}: item={item} name={name} inode={rng.randrange(1, 1 << 40)} "
                         f"dev={rng.randrange(0, 256):02x}:{rng.randrange(0, 256):02x} mode=0100644 ouid=0 ogid=0 "
                         f"rdev=00:00 nametype={rng.choice(['NORMAL', 'PARENT', 'CREATE', 'DELETE'])} cap_fp=0"
                         + ('\x1dOUID="root" OGID="root"' if enriched else ""))
        lines.append(f"type=PROCTITLE msg={stamp}: proctitle={'ab' * rng.randrange(1, 20)}")
    return "\n".join(lines) + "\n"


def _ours(text: str) -> list[dict[str, object]]:
    return [{
        "serial": e.serial, "ms": round(e.time * 1000), "pid": str(e.pid), "uid": str(e.uid), "auid": str(e.auid),
        "comm": e.comm, "exe": e.exe, "cwd": e.cwd,
        "items": [[name, str(inode), dev, nametype] for name, inode, dev, nametype in e.items],
    } for e in parse_events(text.split("\n"))]


def _auparse(path: Path) -> list[dict[str, object]]:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import auparse"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        missing("python3-audit (auparse) not installed for the system python")
    out = subprocess.run([SYSTEM_PYTHON, "-c", _AUPARSE_DUMP, str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    events: list[dict[str, object]] = json.loads(out.stdout)
    for ev in events:
        ev.setdefault("cwd", "")
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_parser_agrees_with_auparse(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    text = FIXTURE.read_text() + _generated_log(rng, 300)
    path = tmp_path / "audit.log"
    path.write_text(text)
    theirs, ours = _auparse(path), _ours(text)
    assert len(ours) == 7 + 300  # the fixture's seven syscalls, then the generated ones
    for a, b in zip(theirs, ours, strict=True):
        assert a == b
