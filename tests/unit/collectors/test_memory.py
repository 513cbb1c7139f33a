"""memory collector: parsers on fixture files, the collector on fixture trees, faults, and the live host."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from mevwatch.collectors import memory as memory_module
from mevwatch.collectors._host import (
    PressureSource,
    enum_family,
    parse_pressure,
    parse_proc_cgroup,
    read_text_status,
    unit_from_cgroup_path,
)
from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.memory import (
    MEMINFO_FIELDS,
    MEMORY_PRESSURE_RATIO,
    MEMORY_PRESSURE_STALLED_SECONDS,
    CgroupLayout,
    MemoryCollector,
    MemoryOptions,
    detect_memory_cgroup,
    meminfo_fields,
    parse_keyed_counts,
    parse_meminfo,
    parse_proc_stat_rss,
    parse_vmstat,
    read_cgroup_memory,
    resolve_unit_cgroup,
    top_processes,
    vmstat_oom_kills,
)
from mevwatch.families import Metric, MetricSpec
from tests.support.families import family_labels, family_value

FIX = Path(__file__).resolve().parents[2] / "fixtures"
KIB = 1024


def _collector(procfs: Path = FIX / "proc", sysfs: Path = FIX / "sys", **opts: object) -> MemoryCollector:
    ctx = CollectorContext("memory", "default", 15.0, 10.0, paths=Paths(procfs=procfs, sysfs=sysfs))
    return MemoryCollector(ctx, MemoryOptions.model_validate(opts))


# --- parsers ------------------------------------------------------------------------------


def test_parse_meminfo_fixture_scales_kib_and_keeps_counts() -> None:
    mem = parse_meminfo((FIX / "proc" / "meminfo").read_text())
    assert mem["MemTotal"] == 65843068 * KIB
    assert mem["MemAvailable"] == 6584306 * KIB
    assert mem["SwapTotal"] == 8388604 * KIB
    assert mem["SwapFree"] == 4194302 * KIB
    assert mem["HugePages_Total"] == 0  # a count, not kB


def test_meminfo_fields_are_the_full_parse_of_the_fields_exported() -> None:
    for text in ((FIX / "proc" / "meminfo").read_text(), Path("/proc/meminfo").read_text()):
        full = parse_meminfo(text)
        assert meminfo_fields(text) == {k: v for k, v in full.items() if k in MEMINFO_FIELDS}
    # an unrelated line the kernel never writes is no longer an error; MemTotal missing still is
    assert meminfo_fields("MemTotal: 10 kB\nWeird line\n") == {"MemTotal": 10240}
    with pytest.raises(ValueError, match="malformed meminfo value"):
        meminfo_fields("MemTotal: lots kB\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MemTotal: lots kB\n", "malformed meminfo value"),
        ("MemTotal 100 kB\n", "malformed meminfo line"),
        ("MemTotal: 100 MB\n", "unknown meminfo unit"),
        ("MemFree: 100 kB\n", "no MemTotal"),
        ("", "no MemTotal"),
    ],
)
def test_parse_meminfo_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_meminfo(text)


def test_parse_vmstat_fixture_has_oom_kill() -> None:
    vm = parse_vmstat((FIX / "proc" / "vmstat").read_text())
    assert vm["oom_kill"] == 3
    assert vm["nr_free_pages"] > 0


@pytest.mark.parametrize("text", ["oom_kill\n", "oom_kill 1 2\n", "oom_kill many\n"])
def test_parse_keyed_counts_rejects_bad_lines(text: str) -> None:
    with pytest.raises(ValueError, match=r"oom_kill|key value"):
        parse_keyed_counts(text)


_MEMINFO_VARIANTS = [
    (FIX / "proc" / "meminfo").read_text(),
    Path("/proc/meminfo").read_text(),
    "MemTotal:  100 kB\n\n  SwapTotal :0\nHugePages_Total: 3",
    "MemTotal: 100 kB\r\nMemFree: 5 kB\r\n",  # not what the kernel writes: the line parser takes it
    "Mem Total: 1\nMemTotal:\t7\t\n",
    "MemTotal: 100 kB\nFoo: +5\n",
]


@pytest.mark.parametrize("text", _MEMINFO_VARIANTS)
def test_parse_meminfo_regex_and_line_parsers_agree(text: str) -> None:
    assert parse_meminfo(text) == memory_module._parse_meminfo_lines(text)


@pytest.mark.parametrize(
    "text",
    [
        (FIX / "proc" / "vmstat").read_text(),
        Path("/proc/vmstat").read_text(),
        "",
        "nr_free_pages 10\n",
        "oom_kill 7",
        "oom_kill\t7\n",
        "oom_kill 1\noom_kill 2\n",
        "nr_free_pages 10\noom_kill 3\nnr_foo 4\n",
    ],
)
def test_vmstat_oom_kills_is_what_parse_vmstat_finds(text: str) -> None:
    assert vmstat_oom_kills(text) == parse_vmstat(text).get("oom_kill")


def test_vmstat_oom_kills_rejects_a_bad_oom_kill_line_or_a_bad_file_without_one() -> None:
    assert vmstat_oom_kills((FIX / "proc" / "vmstat").read_text()) == 3
    with pytest.raises(ValueError, match="oom_kill"):
        vmstat_oom_kills("nr_free_pages 10\noom_kill x\n")
    with pytest.raises(ValueError, match="key value"):
        vmstat_oom_kills("oom_kill 1 2\n")
    with pytest.raises(ValueError, match="key value"):
        vmstat_oom_kills("garbage\n")


def test_parse_pressure_fixture_gives_ratios_and_seconds() -> None:
    psi = parse_pressure((FIX / "proc" / "pressure" / "memory").read_text())
    assert psi["some"].avg10 == pytest.approx(0.125)
    assert psi["some"].avg300 == pytest.approx(0.0105)
    assert psi["some"].total_seconds == pytest.approx(98.765432)
    assert psi["full"].avg60 == pytest.approx(0.01)


def test_parse_pressure_without_full_line() -> None:
    # Kernels before 5.13 print no "full" line for cpu; memory always has both.
    psi = parse_pressure("some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n")
    assert set(psi) == {"some"}


@pytest.mark.parametrize("text", ["", "some avg10=x avg60=0 avg300=0 total=0\n", "garbage\n"])
def test_parse_pressure_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="PSI"):
        parse_pressure(text)


def test_a_pressure_source_reads_its_file_on_every_run(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    path.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
    src = PressureSource(str(path), MEMORY_PRESSURE_RATIO, MEMORY_PRESSURE_STALLED_SECONDS)
    first: list[Metric] = []
    second: list[Metric] = []
    assert src.read(first) == ("ok", "")
    assert src.read(second) == ("ok", "")
    assert first == second
    assert family_value(second, "mevwatch_memory_pressure_stalled_seconds_total", kind="some") == 10e-6
    path.write_text("some avg10=1.50 avg60=0.00 avg300=0.00 total=30\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
    third: list[Metric] = []
    assert src.read(third) == ("ok", "")
    assert family_value(third, "mevwatch_memory_pressure_ratio", kind="some", window="10s") == 0.015
    assert family_value(third, "mevwatch_memory_pressure_stalled_seconds_total", kind="some") == 30e-6
    path.write_text("garbage\n")
    none: list[Metric] = []
    status, detail = src.read(none)
    assert (status, none) == ("invalid", [])
    assert "garbage" in detail
    path.unlink()
    assert src.read(none)[0] == "missing"
    assert none == []


def test_enum_family_has_every_state_with_the_current_one_at_1() -> None:
    spec = MetricSpec("mevwatch_test_status", "gauge", "S", ("source", "status"))
    a = enum_family(spec, [(["x"], "ok"), (["y"], "missing")])
    c = enum_family(spec, [(["x"], "ok"), (["y"], "ok")])
    assert family_value([c], "mevwatch_test_status", source="y", status="ok") == 1
    assert family_value([c], "mevwatch_test_status", source="y", status="missing") == 0
    assert family_value([a], "mevwatch_test_status", source="y", status="missing") == 1


def test_parse_proc_stat_rss_with_spaces_and_parens_in_comm() -> None:
    comm, pages = parse_proc_stat_rss((FIX / "proc" / "4243" / "stat").read_bytes())
    assert comm == "mev detect (x)"
    assert pages == 524288


def test_parse_proc_stat_rss_rejects_truncated_line() -> None:
    with pytest.raises(ValueError, match="fields"):
        parse_proc_stat_rss(b"1 (init) S 0 1")
    with pytest.raises(ValueError, match="malformed"):
        parse_proc_stat_rss(b"no parens here")


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/mev-detection.service", "mev-detection.service"),
        ("/system.slice/mev-detection.service/worker", "mev-detection.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/system.slice", "system.slice"),
        ("/docker/abc123", "/docker/abc123"),
        ("mevwatch-test-1", "/mevwatch-test-1"),
        ("/", ""),
        ("", ""),
    ],
)
def test_unit_from_cgroup_path(path: str, unit: str) -> None:
    assert unit_from_cgroup_path(path) == unit


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/system.slice/nginx.service\n", "/system.slice/nginx.service"),
        # hybrid v1: the systemd hierarchy names the unit even when the memory controller is elsewhere
        ("4:memory:/process_api/x\n1:name=systemd:/system.slice/redis.service\n0::/\n",
         "/system.slice/redis.service"),
        ("9:name=systemd:/\n4:memory:/process_api/e2b\n0::/\n", "/process_api/e2b"),
        ("0::/\n", "/"),
        ("", "/"),
    ],
)
def test_parse_proc_cgroup_prefers_the_unit_path(text: str, path: str) -> None:
    assert parse_proc_cgroup(text) == path


# --- cgroups on fixture trees -------------------------------------------------------------------


def test_detect_cgroup_v1_v2_and_none(tmp_path: Path) -> None:
    v1 = detect_memory_cgroup(FIX / "sys")
    assert v1 == CgroupLayout(1, FIX / "sys" / "fs" / "cgroup" / "memory")
    v2 = detect_memory_cgroup(FIX / "sys-cgroup2")
    assert v2 == CgroupLayout(2, FIX / "sys-cgroup2" / "fs" / "cgroup")
    assert detect_memory_cgroup(tmp_path) is None
    # v2 without the memory controller enabled
    (tmp_path / "fs" / "cgroup").mkdir(parents=True)
    (tmp_path / "fs" / "cgroup" / "cgroup.controllers").write_text("cpu io pids\n")
    assert detect_memory_cgroup(tmp_path) is None


def test_resolve_unit_in_system_slice_and_nested_slice() -> None:
    layout = detect_memory_cgroup(FIX / "sys")
    assert layout is not None
    erigon = layout.root / "system.slice/ethereum-erigon.service"
    assert resolve_unit_cgroup(layout, "ethereum-erigon.service") == erigon
    assert resolve_unit_cgroup(layout, "mev-execution.service") == (
        layout.root / "user.slice/mev.slice/mev-execution.service"
    )
    assert resolve_unit_cgroup(layout, "nginx.service") is None


def test_resolve_unit_with_glob_characters_in_its_name(tmp_path: Path) -> None:
    layout = CgroupLayout(2, tmp_path)
    (tmp_path / "user.slice" / "app[1].service").mkdir(parents=True)
    (tmp_path / "user.slice" / "app1.service").mkdir()
    assert resolve_unit_cgroup(layout, "app[1].service") == tmp_path / "user.slice" / "app[1].service"


def test_read_cgroup_memory_v1_and_v2() -> None:
    v1 = detect_memory_cgroup(FIX / "sys")
    v2 = detect_memory_cgroup(FIX / "sys-cgroup2")
    assert v1 is not None
    assert v2 is not None
    for layout in (v1, v2):
        erigon = read_cgroup_memory(layout, layout.root / "system.slice/ethereum-erigon.service")
        assert (erigon.usage_bytes, erigon.limit_bytes, erigon.oom_kills) == (15032385536, 16 << 30, 2)
        detection = read_cgroup_memory(layout, layout.root / "system.slice/mev-detection.service")
        assert detection.limit_bytes is None  # v1 PAGE_COUNTER_MAX, v2 "max"
    old_kernel = read_cgroup_memory(v1, v1.root / "user.slice/mev.slice/mev-execution.service")
    assert old_kernel.oom_kills is None  # memory.oom_control without oom_kill (before 4.13)
    with pytest.raises(ValueError, match="not-a-number"):
        read_cgroup_memory(v1, v1.root / "system.slice/mev-analytics.service")


# --- processes ----------------------------------------------------------------------------------


def test_top_processes_groups_same_comm_and_unit_and_skips_kernel_threads() -> None:
    groups = {(g.comm, g.unit): g for g in top_processes(FIX / "proc", 10, 4096)}
    assert set(groups) == {
        ("erigon", "ethereum-erigon.service"),
        ("mev detect (x)", "mev-detection.service"),
        ("postgres", "postgresql@15-main.service"),
    }
    assert groups[("erigon", "ethereum-erigon.service")].resident_bytes == 3145728 * 4096
    pg = groups[("postgres", "postgresql@15-main.service")]
    assert (pg.processes, pg.resident_bytes) == (2, (262144 + 131072) * 4096)


def test_top_processes_keeps_only_the_n_largest() -> None:
    groups = top_processes(FIX / "proc", 2, 4096)
    assert sorted(g.comm for g in groups) == ["erigon", "mev detect (x)"]


def test_top_processes_missing_procfs_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        top_processes(tmp_path / "nope", 10, 4096)


# --- the collector on fixtures ------------------------------------------------------------------


async def test_collector_on_fixture_tree() -> None:
    fams = await _collector().collect()
    assert family_value(fams, "mevwatch_memory_total_bytes") == 65843068 * KIB
    assert family_value(fams, "mevwatch_memory_available_bytes") == 6584306 * KIB
    assert family_value(fams, "mevwatch_memory_used_ratio") == pytest.approx(0.9, abs=1e-6)
    assert family_value(fams, "mevwatch_memory_swap_used_ratio") == pytest.approx(0.5, abs=1e-6)
    assert family_value(fams, "mevwatch_memory_cached_bytes") == (4096000 + 512000) * KIB
    assert family_value(fams, "mevwatch_memory_pressure_ratio", kind="full", window="10s") == pytest.approx(0.031)
    assert family_value(fams, "mevwatch_memory_pressure_stalled_seconds_total", kind="some") == pytest.approx(
        98.765432
    )
    assert family_value(fams, "mevwatch_memory_oom_kills_total") == 3
    assert family_value(fams, "mevwatch_memory_source_status", source="pressure", status="ok") == 1

    erigon = {"unit": "ethereum-erigon.service", "cgroup": ""}
    assert family_value(fams, "mevwatch_memory_cgroup_usage_bytes", **erigon) == 15032385536
    assert family_value(fams, "mevwatch_memory_cgroup_limit_bytes", **erigon) == 16 << 30
    assert family_value(fams, "mevwatch_memory_cgroup_used_ratio", **erigon) == pytest.approx(0.875)
    assert family_value(fams, "mevwatch_memory_cgroup_oom_kills_total", **erigon) == 2
    detection = {"unit": "mev-detection.service", "cgroup": ""}
    assert family_value(fams, "mevwatch_memory_cgroup_limit_bytes", **detection) is None  # unlimited
    assert family_value(fams, "mevwatch_memory_cgroup_status", **detection, status="ok") == 1
    analytics = {"unit": "mev-analytics.service", "cgroup": ""}
    assert family_value(fams, "mevwatch_memory_cgroup_status", **analytics, status="invalid") == 1
    assert family_value(fams, "mevwatch_memory_cgroup_status", **analytics, status="ok") == 0
    assert family_value(
        fams, "mevwatch_memory_top_process_resident_bytes", comm="erigon", unit="ethereum-erigon.service"
    ) == 3145728 * os.sysconf("SC_PAGE_SIZE")
    assert family_value(fams, "mevwatch_memory_top_processes", comm="postgres") == 2
    assert all("pid" not in labels for labels in family_labels(fams, "mevwatch_memory_top_process_resident_bytes"))
    for fam in fams:
        assert fam.documentation, fam.name
        assert fam.samples, f"{fam.name} rendered without samples"


async def test_collector_watches_configured_cgroup_paths_on_cgroup_v2() -> None:
    fams = await _collector(
        sysfs=FIX / "sys-cgroup2", units=["ethereum-erigon"], cgroups=["system.slice/mev-detection.service"]
    ).collect()
    assert family_value(
        fams, "mevwatch_memory_cgroup_oom_kills_total", unit="ethereum-erigon.service", cgroup=""
    ) == 2
    watched = {"unit": "mev-detection.service", "cgroup": "/system.slice/mev-detection.service"}
    assert family_value(fams, "mevwatch_memory_cgroup_usage_bytes", **watched) == 2147483648
    assert family_value(fams, "mevwatch_memory_cgroup_oom_kills_total", **watched) == 0


async def test_collector_top_processes_off() -> None:
    fams = await _collector(top_processes=0, units=[]).collect()
    assert family_labels(fams, "mevwatch_memory_top_process_resident_bytes") == []
    assert family_labels(fams, "mevwatch_memory_cgroup_status") == []
    assert {lbl["source"] for lbl in family_labels(fams, "mevwatch_memory_source_status")} == {"pressure", "vmstat"}


# --- faults -------------------------------------------------------------------------------------


def _copy_proc(tmp_path: Path) -> Path:
    procfs = tmp_path / "proc"
    shutil.copytree(FIX / "proc", procfs)
    return procfs


async def test_missing_meminfo_is_a_collector_error(tmp_path: Path) -> None:
    procfs = _copy_proc(tmp_path)
    (procfs / "meminfo").unlink()
    with pytest.raises(CollectorError) as err:
        await _collector(procfs=procfs).collect()
    assert err.value.reason == "meminfo_missing"
    assert "meminfo does not exist" in err.value.message


async def test_garbage_meminfo_is_a_collector_error(tmp_path: Path) -> None:
    procfs = _copy_proc(tmp_path)
    (procfs / "meminfo").write_bytes(b"\x00\xffMemTotal: ?? kB\n")
    with pytest.raises(CollectorError) as err:
        await _collector(procfs=procfs).collect()
    assert err.value.reason == "meminfo_invalid"


async def test_missing_pressure_and_vmstat_give_status_not_exception(tmp_path: Path) -> None:
    procfs = _copy_proc(tmp_path)
    shutil.rmtree(procfs / "pressure")
    (procfs / "vmstat").write_text("nr_free_pages 10\n")  # kernel before 4.13: no oom_kill
    fams = await _collector(procfs=procfs).collect()
    assert family_value(fams, "mevwatch_memory_source_status", source="pressure", status="missing") == 1
    assert family_value(fams, "mevwatch_memory_source_status", source="vmstat", status="missing") == 1
    assert family_value(fams, "mevwatch_memory_pressure_ratio", kind="some", window="10s") is None
    assert family_value(fams, "mevwatch_memory_oom_kills_total") is None
    assert family_value(fams, "mevwatch_memory_total_bytes") == 65843068 * KIB


async def test_unreadable_and_invalid_pressure_give_status(tmp_path: Path) -> None:
    procfs = _copy_proc(tmp_path)
    (procfs / "pressure" / "memory").unlink()
    (procfs / "pressure" / "memory").mkdir()  # read fails with EISDIR, even for root
    fams = await _collector(procfs=procfs).collect()
    assert family_value(fams, "mevwatch_memory_source_status", source="pressure", status="unreadable") == 1
    (procfs / "pressure" / "memory").rmdir()
    (procfs / "pressure" / "memory").write_text("some avg10=bogus\n")
    (procfs / "vmstat").write_text("oom_kill x\n")
    fams = await _collector(procfs=procfs).collect()
    assert family_value(fams, "mevwatch_memory_source_status", source="pressure", status="invalid") == 1
    assert family_value(fams, "mevwatch_memory_source_status", source="vmstat", status="invalid") == 1


def test_psi_disabled_at_boot_reads_as_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With psi=0 on the kernel command line the file exists but opening it fails with EOPNOTSUPP.
    target = tmp_path / "memory"
    target.write_text("")
    real = os.open

    def fake_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if os.fspath(path) == str(target):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    for path in (target, str(target)):
        text, status, detail = read_text_status(path)
        assert (text, status) == (None, "disabled")
        assert "not supported" in detail
        assert str(target) in detail


async def test_unlistable_procfs_gives_processes_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(procfs: Path, n: int, page_size: int) -> list[object]:
        raise PermissionError(13, "Permission denied", str(procfs))

    monkeypatch.setattr(memory_module, "top_processes", denied)
    fams = await _collector().collect()
    assert family_value(fams, "mevwatch_memory_source_status", source="processes", status="unreadable") == 1
    assert family_labels(fams, "mevwatch_memory_top_process_resident_bytes") == []
    assert family_value(fams, "mevwatch_memory_total_bytes") == 65843068 * KIB


async def test_no_cgroup_hierarchy_marks_every_watched_unit_missing(tmp_path: Path) -> None:
    fams = await _collector(sysfs=tmp_path).collect()
    assert family_value(fams, "mevwatch_memory_source_status", source="cgroup", status="missing") == 1
    for unit in ("ethereum-erigon.service", "mev-detection.service", "mev-execution.service"):
        assert family_value(fams, "mevwatch_memory_cgroup_status", unit=unit, status="missing") == 1


async def test_cgroup_file_vanishing_reads_as_missing(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIX / "sys", sysfs)
    (sysfs / "fs/cgroup/memory/system.slice/ethereum-erigon.service/memory.oom_control").unlink()
    fams = await _collector(sysfs=sysfs).collect()
    assert family_value(
        fams, "mevwatch_memory_cgroup_status", unit="ethereum-erigon.service", cgroup="", status="missing"
    ) == 1


# --- options ------------------------------------------------------------------------------------


def test_default_options_normalise_unit_names() -> None:
    assert MemoryOptions().units == [
        "ethereum-erigon.service", "mev-detection.service", "mev-execution.service", "mev-analytics.service"
    ]
    assert MemoryOptions(units=["session-1.scope"]).units == ["session-1.scope"]
    assert MemoryOptions(cgroups=["/a//b/"]).cgroups == ["/a/b"]


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"units": ["system.slice/nginx.service"]}, "units"),
        ({"units": [""]}, "units"),
        ({"cgroups": ["/"]}, "cgroups"),
        ({"cgroups": ["../etc"]}, "cgroups"),
        ({"top_processes": 101}, "top_processes"),
        ({"top_processes": -1}, "top_processes"),
        ({"top_n": 5}, "top_n"),
    ],
)
def test_bad_options_are_rejected_with_their_field(opts: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        MemoryOptions.model_validate(opts)
    assert err.value.errors()[0]["loc"][0] == field


# --- live host ----------------------------------------------------------------------------------


def _own_cgroups() -> list[str]:
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    return [own] if detect_memory_cgroup(Path("/sys")) is not None and own != "/" else []


def _mem_total() -> int:
    return parse_meminfo(Path("/proc/meminfo").read_text())["MemTotal"]


async def test_collector_on_the_live_host() -> None:
    cgroups = _own_cgroups()
    fams = await _collector(procfs=Path("/proc"), sysfs=Path("/sys"), cgroups=cgroups).collect()
    total = _mem_total()
    assert family_value(fams, "mevwatch_memory_total_bytes") == total
    ratio = family_value(fams, "mevwatch_memory_used_ratio")
    assert ratio is not None
    assert 0.0 < ratio < 1.0
    assert family_value(fams, "mevwatch_memory_source_status", source="processes", status="ok") == 1
    tops = family_labels(fams, "mevwatch_memory_top_process_resident_bytes")
    assert 1 <= len(tops) <= 10
    if cgroups:
        usage = family_value(fams, "mevwatch_memory_cgroup_usage_bytes", cgroup=cgroups[0])
        assert usage is not None
        assert usage > 0
