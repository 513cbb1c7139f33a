"""The services collector: systemctl show parsing and timeouts, the process backend on real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.services import (
    ACTIVE_STATES,
    ProcInfo,
    ServicesCollector,
    ServicesOptions,
    UnitSpec,
    match_processes,
    mono_usec_to_wall,
    parse_proc_stat,
    parse_systemctl_show,
    scan_processes,
    systemd_booted,
)
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.docgen import declaration_problems
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import need_binary

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd"
FIXTURE_PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"
MIXED_UNITS = ["nginx", "mev-execution", "mev-detection", "ethereum-erigon", "mev-analytics", "redis", "postgresql"]


def value(families: Any, name: str, **labels: str) -> float | None:
    for fam in families:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def active_state(families: Any, unit: str) -> str | None:
    hits = [s.labels["state"] for fam in families for s in fam.samples
            if s.name == "mevwatch_service_state" and s.labels["unit"] == unit and s.value == 1.0]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def make(rootfs: Path = Path("/"), timeout: float = 5.0, **opts: Any) -> ServicesCollector:
    ctx = CollectorContext("services", "test", interval=1.0, timeout=timeout, paths=Paths(rootfs=rootfs))
    return ServicesCollector(ctx, ServicesOptions.model_validate(opts))


@pytest.fixture
def booted_root(tmp_path: Path) -> Path:
    """A root filesystem on which systemd looks booted (sd_booted: /run/systemd/system exists)."""
    root = tmp_path / "root"
    (root / "run" / "systemd" / "system").mkdir(parents=True)
    return root


def fake_systemctl(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "fake-systemctl"
    exe.write_text("#!/bin/sh\n" + f'echo "$@" > {tmp_path}/argv\n' + body + "\n")
    exe.chmod(0o755)
    return exe


# --- systemd: parsing -----------------------------------------------------------------------


def test_parse_recorded_show_output_of_every_active_state() -> None:
    states = parse_systemctl_show((FIXTURES / "mixed-states.txt").read_text(), len(MIXED_UNITS))
    by_unit = dict(zip(MIXED_UNITS, states, strict=True))
    assert {s.active_state for s in states} == set(ACTIVE_STATES)
    assert by_unit["nginx"].active_state == "active"
    assert by_unit["nginx"].main_pid == 1187
    assert by_unit["mev-execution"].active_state == "failed"
    assert by_unit["mev-execution"].restarts == 7
    assert by_unit["mev-detection"].sub_state == "auto-restart"
    assert by_unit["ethereum-erigon"].load_state == "not-found"
    assert by_unit["ethereum-erigon"].state_change_usec == 0
    assert by_unit["redis"].active_state == "deactivating"
    assert by_unit["postgresql"].active_state == "reloading"


def test_parse_show_output_of_old_systemd_without_nrestarts() -> None:
    states = parse_systemctl_show((FIXTURES / "old-systemd.txt").read_text(), 2)
    assert [s.restarts for s in states] == [None, None]
    assert states[1].load_state == "masked"


@pytest.mark.parametrize(
    ("text", "count", "message"),
    [
        ("ActiveState=active\nLoadState=loaded\n", 2, "1 unit blocks for 2 units"),
        ("ActiveState=active\nthis is not a property\n", 1, "not a Key=value line"),
        ("Id=x.service\nSubState=dead\n", 1, "without ActiveState/LoadState"),
    ],
)
def test_parse_show_rejects_malformed_output(text: str, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_systemctl_show(text, count)


def test_monotonic_timestamps_become_unix_time() -> None:
    # 100 s after boot, observed at monotonic 1100 s and wall 1e9: it happened 1000 s ago.
    assert mono_usec_to_wall(100_000_000, now_wall=1e9, now_mono=1100.0) == pytest.approx(1e9 - 1000)


def test_systemd_booted_follows_run_systemd_system(tmp_path: Path, booted_root: Path) -> None:
    assert systemd_booted(booted_root)
    assert not systemd_booted(tmp_path / "empty")


# --- systemd: the collector against recorded outputs --------------------------------------


async def test_systemd_backend_exports_every_state_restarts_and_since(tmp_path: Path, booted_root: Path) -> None:
    exe = fake_systemctl(tmp_path, f"cat {FIXTURES / 'mixed-states.txt'}")
    coll = make(booted_root, systemctl=str(exe), units=MIXED_UNITS)
    fams = await coll.collect()
    argv = (tmp_path / "argv").read_text().split()
    assert argv[0] == "show"
    assert argv[-len(MIXED_UNITS):] == MIXED_UNITS
    assert any(a.startswith("--property=") and "NRestarts" in a for a in argv)
    expected = {"nginx": "active", "mev-execution": "failed", "mev-detection": "activating",
                "ethereum-erigon": "inactive", "mev-analytics": "inactive", "redis": "deactivating",
                "postgresql": "reloading"}
    for unit, state in expected.items():
        assert active_state(fams, unit) == state
        # every state is exported, 0 or 1, so rules can match any of them
        assert sum(value(fams, "mevwatch_service_state", unit=unit, state=s) == 0.0 for s in ACTIVE_STATES) == 5
    assert value(fams, "mevwatch_service_up", unit="nginx") == 1.0
    assert value(fams, "mevwatch_service_up", unit="postgresql") == 1.0  # reloading still serves
    assert value(fams, "mevwatch_service_up", unit="mev-execution") == 0.0
    assert value(fams, "mevwatch_service_restarts_total", unit="mev-execution") == 7.0
    assert value(fams, "mevwatch_service_load_state", unit="ethereum-erigon", state="not-found") == 1.0
    assert value(fams, "mevwatch_service_load_state", unit="nginx", state="loaded") == 1.0
    assert value(fams, "mevwatch_service_state_change_timestamp_seconds", unit="ethereum-erigon") is None
    since = value(fams, "mevwatch_service_state_change_timestamp_seconds", unit="mev-execution")
    boot = time.time() - time.monotonic()
    assert since == pytest.approx(boot + 86215.002113, abs=1.0)
    assert value(fams, "mevwatch_service_start_time_seconds", unit="nginx") == pytest.approx(boot + 9.521384, abs=1.0)
    assert value(fams, "mevwatch_service_start_time_seconds", unit="mev-execution") is None  # no main process
    assert value(fams, "mevwatch_services_backend", backend="systemd") == 1.0
    assert declaration_problems(fams, ServicesCollector.metrics) == []


async def test_hung_systemctl_is_killed_and_the_run_fails_fast(tmp_path: Path, booted_root: Path) -> None:
    exe = fake_systemctl(tmp_path, f"echo $$ > {tmp_path}/pid\nsleep 30 &\necho $! > {tmp_path}/child\nwait")
    coll = make(booted_root, systemctl=str(exe), systemctl_timeout="300ms", units=["nginx"])
    t0 = time.monotonic()
    with pytest.raises(CollectorError) as err:
        await coll.collect()
    assert time.monotonic() - t0 < 3.0
    assert err.value.reason == "systemctl_timeout"
    assert "killed" in err.value.message
    for name in ("pid", "child"):
        pid = int((tmp_path / name).read_text())
        for _ in range(50):
            if not _alive(pid):
                break
            await asyncio.sleep(0.02)
        assert not _alive(pid), f"{name} {pid} survived"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def test_systemctl_failure_is_reported_with_its_stderr(tmp_path: Path, booted_root: Path) -> None:
    exe = fake_systemctl(tmp_path, "echo 'Access denied' >&2\nexit 4")
    with pytest.raises(CollectorError) as err:
        await make(booted_root, systemctl=str(exe), units=["nginx"]).collect()
    assert err.value.reason == "systemctl_failed"
    assert "exited 4: Access denied" in err.value.message


async def test_systemd_backend_without_systemd_says_systemd_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CollectorError) as err:
        await make(tmp_path, backend="systemd").collect()
    assert err.value.reason == "systemd_unavailable"
    assert "run/systemd/system is missing" in err.value.message


async def test_real_systemctl_without_systemd_as_pid1_says_systemd_unavailable(booted_root: Path) -> None:
    """This host has systemctl but no systemd running: systemctl's own refusal becomes the status."""
    exe = need_binary("systemctl")
    with pytest.raises(CollectorError) as err:
        await make(booted_root, backend="systemd", systemctl=exe, units=["nginx"]).collect()
    assert err.value.reason == "systemd_unavailable"
    assert "systemd not available" in err.value.message


async def test_auto_backend_without_systemd_uses_processes_and_says_so(tmp_path: Path) -> None:
    fams = await make(tmp_path, units=["nginx"]).collect()
    assert value(fams, "mevwatch_services_systemd_available") == 0.0
    assert value(fams, "mevwatch_services_backend", backend="process") == 1.0
    assert value(fams, "mevwatch_services_backend", backend="systemd") == 0.0


# --- process backend ------------------------------------------------------------------------


def test_parse_proc_stat_with_parentheses_and_spaces_in_comm() -> None:
    line = "4242 (mev (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 1 0 0 20 0 4 0 98765 1000 10 " + "0 " * 30
    assert parse_proc_stat(line) == ("mev (x) y", "S", 98765)
    with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
        parse_proc_stat("garbage")


def test_match_processes_by_comm_cmdline_and_pidfile_oldest_first() -> None:
    procs = [
        ProcInfo(30, "nginx", "S", 500, "nginx: worker process"),
        ProcInfo(10, "nginx", "S", 100, "nginx: master process /usr/sbin/nginx"),
        ProcInfo(20, "python3", "S", 200, "python3 -m mev_detection --config /etc/mev/config.yaml"),
        ProcInfo(40, "erigon", "S", 300, "erigon --datadir /data/blockchain"),
    ]
    assert [p.pid for p in match_processes(procs, UnitSpec(name="nginx"))] == [10, 30]
    spec = UnitSpec(name="mev-detection", cmdline=r"-m mev_detection\b")
    assert [p.pid for p in match_processes(procs, spec)] == [20]
    assert [p.pid for p in match_processes(procs, UnitSpec(name="ethereum-erigon"))] == [40]
    assert [p.pid for p in match_processes(procs, UnitSpec(name="x", pidfile="/run/x.pid"), 40)] == [40]
    assert match_processes(procs, UnitSpec(name="x", pidfile="/run/x.pid"), None) == []
    assert match_processes(procs, UnitSpec(name="redis")) == []


@pytest.fixture
def spawner() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def _spawn(procs: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(argv)
    procs.append(p)
    return p


async def test_process_backend_tracks_real_processes_up_down_and_restarts(
    tmp_path: Path, spawner: list[subprocess.Popen[bytes]]
) -> None:
    token = uuid.uuid4().hex[:12]
    comm = f"mevt{token[:8]}"  # comm is the executable's file name (a link to sleep)
    link = tmp_path / comm
    link.symlink_to(need_binary("sleep"))
    pidfile = tmp_path / "svc.pid"
    units = [
        {"name": "by-comm", "comm": comm},
        {"name": "by-cmdline", "cmdline": f"mevwatch-test-{token}"},
        {"name": "by-pidfile", "pidfile": str(pidfile)},
    ]
    coll = make(backend="process", units=units)
    fams = await coll.collect()
    for u in ("by-comm", "by-cmdline", "by-pidfile"):
        assert active_state(fams, u) == "inactive"
        assert value(fams, "mevwatch_service_up", unit=u) == 0.0

    started = time.time()
    a = _spawn(spawner, [str(link), "60"])
    b = _spawn(spawner, [sys.executable, "-c", "import time; time.sleep(60)", f"mevwatch-test-{token}"])
    c = _spawn(spawner, ["sleep", "60"])
    pidfile.write_text(f"{c.pid}\n")
    await asyncio.sleep(0.1)
    fams = await coll.collect()
    for u in ("by-comm", "by-cmdline", "by-pidfile"):
        assert active_state(fams, u) == "active", u
        assert value(fams, "mevwatch_service_processes", unit=u) == 1.0
        start = value(fams, "mevwatch_service_start_time_seconds", unit=u)
        assert start is not None
        assert started - 2 < start < time.time() + 1
        assert value(fams, "mevwatch_service_restarts_total", unit=u) == 0.0

    for p in (a, b, c):
        p.send_signal(signal.SIGTERM)
        p.wait(5)
    down_at = time.time()
    fams = await coll.collect()
    for u in ("by-comm", "by-cmdline", "by-pidfile"):
        assert active_state(fams, u) == "inactive", u
        assert value(fams, "mevwatch_service_start_time_seconds", unit=u) is None
        since = value(fams, "mevwatch_service_state_change_timestamp_seconds", unit=u)
        assert since is not None
        assert since >= down_at - 0.5

    # Started again with new PIDs: one restart seen per service.
    _spawn(spawner, [str(link), "60"])
    _spawn(spawner, [sys.executable, "-c", "import time; time.sleep(60)", f"mevwatch-test-{token}"])
    c2 = _spawn(spawner, ["sleep", "60"])
    pidfile.write_text(f"{c2.pid}\n")
    await asyncio.sleep(0.1)
    fams = await coll.collect()
    for u in ("by-comm", "by-cmdline", "by-pidfile"):
        assert active_state(fams, u) == "active", u
        assert value(fams, "mevwatch_service_restarts_total", unit=u) == 1.0
    assert declaration_problems(fams, ServicesCollector.metrics) == []


async def test_process_backend_ignores_zombies(tmp_path: Path, spawner: list[subprocess.Popen[bytes]]) -> None:
    token = uuid.uuid4().hex[:8]
    link = tmp_path / f"mevz{token}"
    link.symlink_to(need_binary("true"))
    p = _spawn(spawner, [str(link)])
    await asyncio.sleep(0.2)  # exited, not reaped: a zombie
    fams = await make(backend="process", units=[{"name": "z", "comm": link.name}]).collect()
    assert active_state(fams, "z") == "inactive"
    p.wait(5)


def test_named_processes_only_are_read_and_match_as_in_a_full_scan(
    tmp_path: Path, spawner: list[subprocess.Popen[bytes]]
) -> None:
    """With every unit named by comm or pidfile, the scan reads only those processes' stat (the
    comm file first); what it returns is what the full scan returns for them."""
    link = tmp_path / f"mevn{uuid.uuid4().hex[:8]}"
    link.symlink_to(need_binary("sleep"))
    a = _spawn(spawner, [str(link), "60"])
    b = _spawn(spawner, [str(link), "60"])
    c = _spawn(spawner, ["sleep", "60"])
    pidfile = tmp_path / "svc.pid"
    pidfile.write_text(f"{c.pid}\n")
    named = frozenset({link.name})
    ours = {a.pid, b.pid, c.pid}

    deadline = time.monotonic() + 10
    # until exec'ed (so renamed) and asleep: a process still loading is R in one scan and S in the next
    while not ours <= {p.pid for p in scan_processes(Path("/proc"), False)
                       if p.comm in (link.name, "sleep") and p.state == "S"}:
        assert time.monotonic() < deadline, "spawned processes not seen asleep under their names"
        time.sleep(0.02)
    full = {p.pid: p for p in scan_processes(Path("/proc"), False) if p.comm in named or p.pid == c.pid}
    only = scan_processes(Path("/proc"), True, named, frozenset({c.pid}))
    assert {p.pid for p in only} == set(full) == ours
    assert all(p == replace(full[p.pid], cmdline=p.cmdline) for p in only)
    assert {p.cmdline for p in only} == {f"{link} 60", "sleep 60"}

    coll = make(backend="process", units=[{"name": "by-comm", "comm": link.name},
                                          {"name": "by-pidfile", "pidfile": str(pidfile)}])
    fams = asyncio.run(coll.collect())
    assert value(fams, "mevwatch_service_processes", unit="by-comm") == 2.0
    assert value(fams, "mevwatch_service_processes", unit="by-pidfile") == 1.0

    # A procfs tree without comm files (a fixture): the names come from stat.
    assert sorted(p.pid for p in scan_processes(FIXTURE_PROC, False, frozenset({"postgres"}))) == [4250, 4251]


# --- options and the daemon -----------------------------------------------------------------


def test_default_units_are_the_runbook_services() -> None:
    names = [u.name for u in ServicesOptions().units]
    assert names == ["ethereum-erigon", "mev-detection", "mev-execution", "mev-analytics", "nginx", "redis",
                     "postgresql"]
    by = {u.name: u for u in ServicesOptions().units}
    assert by["ethereum-erigon"].process_comm == "erigon"
    assert by["redis"].process_comm == "redis-server"
    assert by["postgresql"].process_comm == "postgres"


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{backend: dbus}", "collectors[0].services.backend", "'auto', 'systemd' or 'process'"),
        ("{units: ['bad unit']}", "collectors[0].services.units[0].name", "not a systemd unit name"),
        ("{units: [{name: x, cmdline: '(['}]}", "collectors[0].services.units[0].cmdline", "invalid regular"),
        ("{units: [{name: x, pidfile: run/x.pid}]}", "collectors[0].services.units[0].pidfile", "not an absolute"),
        ("{units: [nginx, nginx]}", "collectors[0].services.units", "duplicate unit nginx"),
        ("{units: [{name: x, exe: y}]}", "collectors[0].services.units[0].exe", "unknown key"),
        ("{systemctl_timeout: -1}", "collectors[0].services.systemctl_timeout", "must not be negative"),
    ],
)
def test_bad_options_are_config_errors_with_field_path(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - services: {body}\n")
    text = str(err.value)
    assert path in text, text
    assert message in text, text


def test_daemon_serves_service_and_disk_metrics(tmp_path: Path) -> None:
    config = (
        "collectors:\n"
        "  - services: {interval: 200ms, units: [{name: mevwatch-self, cmdline: 'mevwatch run'}, nginx]}\n"
        "  - filesystems: {interval: 200ms}\n"
    )
    with RunningDaemon(tmp_path, config) as d:
        d.wait_for("mevwatch_service_up", unit="mevwatch-self")
        text = d.get()
        assert sample_value(text, "mevwatch_service_state", unit="mevwatch-self", state="active") == 1.0
        assert sample_value(text, "mevwatch_service_state", unit="nginx", state="inactive") == 1.0
        assert sample_value(text, "mevwatch_filesystem_status", mountpoint="/", status="ok") == 1.0
        assert sample_value(text, "mevwatch_collector_success", collector="services") == 1.0
        assert sample_value(text, "mevwatch_collector_success", collector="filesystems") == 1.0
