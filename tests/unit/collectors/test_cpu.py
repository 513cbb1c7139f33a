"""cpu collector: parsers, sysfs fixture trees (bare metal with cpufreq, VM without), faults, live host."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from mevwatch.collectors import _host
from mevwatch.collectors import cpu as cpu_module
from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.cpu import (
    CPU_MODES,
    FREQUENCY_STATES,
    CpuCollector,
    CpuFreq,
    CpuOptions,
    ProcStat,
    cpu_time_ratios,
    cpuinfo_clock_is_fixed,
    list_cpus,
    parse_cpuinfo,
    parse_loadavg,
    parse_proc_stat,
    read_cpufreq,
    read_throttle,
)
from tests.support.families import family_labels, family_value

FIX = Path(__file__).resolve().parents[2] / "fixtures"
VM_CPUINFO = """processor\t: 0
model name\t: AMD EPYC
cpu MHz\t\t: 2596.126
flags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm

processor\t: 1
model name\t: AMD EPYC
cpu MHz\t\t: 2596.126
flags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm
"""


def _collector(procfs: Path = FIX / "proc", sysfs: Path = FIX / "sys") -> CpuCollector:
    ctx = CollectorContext("cpu", "default", 15.0, 5.0, paths=Paths(procfs=procfs, sysfs=sysfs))
    return CpuCollector(ctx, CpuOptions())


def _ticks(**kw: int) -> ProcStat:
    return ProcStat({m: kw.get(m, 0) for m in CPU_MODES})


# --- parsers ------------------------------------------------------------------------------


def test_parse_proc_stat_fixture() -> None:
    stat = parse_proc_stat((FIX / "proc" / "stat").read_text())
    assert stat.ticks == {
        "user": 1000000, "nice": 2000, "system": 300000, "idle": 8000000,
        "iowait": 50000, "irq": 0, "softirq": 10000, "steal": 40000,
    }
    assert (stat.procs_running, stat.procs_blocked) == (9, 2)


def test_parse_proc_stat_old_kernel_without_steal_column() -> None:
    stat = parse_proc_stat("cpu  10 0 5 100\n")
    assert stat.ticks["steal"] == 0
    assert stat.ticks["idle"] == 100
    assert stat.procs_running is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu0 1 2 3 4\n", "no aggregate 'cpu' line"),
        ("", "no aggregate 'cpu' line"),
        ("cpu  1 2 x 4\n", "non-numeric"),
        ("cpu  1 2\n", "expected >= 4"),
    ],
)
def test_parse_proc_stat_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_proc_stat(text)


def test_cpu_time_ratios_from_deltas() -> None:
    prev = parse_proc_stat((FIX / "proc" / "stat").read_text())
    cur = ProcStat({m: v + {"user": 100, "idle": 700, "iowait": 100, "steal": 100}.get(m, 0)
                    for m, v in prev.ticks.items()})
    ratios = cpu_time_ratios(prev, cur)
    assert ratios is not None
    assert ratios["steal"] == pytest.approx(0.1)
    assert ratios["iowait"] == pytest.approx(0.1)
    assert ratios["idle"] == pytest.approx(0.7)
    assert sum(ratios.values()) == pytest.approx(1.0)


def test_cpu_time_ratios_iowait_going_backwards_counts_as_zero() -> None:
    ratios = cpu_time_ratios(_ticks(idle=100, iowait=50), _ticks(idle=200, iowait=40))
    assert ratios is not None
    assert ratios["iowait"] == 0.0
    assert ratios["idle"] == 1.0


def test_cpu_time_ratios_without_elapsed_time() -> None:
    assert cpu_time_ratios(_ticks(idle=5), _ticks(idle=5)) is None


def test_parse_loadavg() -> None:
    assert parse_loadavg((FIX / "proc" / "loadavg").read_text()) == (7.52, 5.10, 3.01)
    with pytest.raises(ValueError, match="malformed"):
        parse_loadavg("1.0 2.0\n")
    with pytest.raises(ValueError, match="malformed"):
        parse_loadavg("a b c 1/2 3\n")


def test_parse_cpuinfo_bare_metal_vm_and_arm() -> None:
    mhz, virtual = parse_cpuinfo((FIX / "proc" / "cpuinfo").read_text())
    assert mhz == {0: 3899.812e6, 1: 800e6, 2: 4700.020e6, 3: 3600e6}
    assert virtual is False
    mhz, virtual = parse_cpuinfo(VM_CPUINFO)
    assert virtual is True
    assert mhz[1] == pytest.approx(2596.126e6)
    assert parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n") == ({}, False)


# --- sysfs fixture tree ---------------------------------------------------------------------


def test_list_cpus_and_cpufreq_and_throttle_from_fixture() -> None:
    sysfs = FIX / "sys"
    assert list_cpus(sysfs) == [0, 1, 2, 3]
    assert read_cpufreq(sysfs, 1) == CpuFreq(
        governor="powersave",
        available_governors=("performance", "powersave"),
        current_hz=800e6,
        min_hz=800e6,
        max_hz=4900e6,
        scaling_min_hz=800e6,
        scaling_max_hz=2400e6,
    )
    assert read_cpufreq(sysfs, 3) is None  # no cpufreq driver bound to cpu3
    throttle = read_throttle(sysfs, 2)
    assert throttle is not None
    assert (throttle.core_count, throttle.core_seconds) == (12, 2.25)
    assert (throttle.package, throttle.package_count, throttle.package_seconds) == ("0", 34, 6.1)
    assert list_cpus(sysfs / "nope") == []


async def test_collector_on_fixture_tree() -> None:
    fams = await _collector().collect()
    gov = "mevwatch_cpu_frequency_governor"
    assert family_value(fams, gov, cpu="0", governor="performance") == 1
    assert family_value(fams, gov, cpu="0", governor="powersave") == 0
    assert family_value(fams, gov, cpu="1", governor="powersave") == 1
    assert [lbl for lbl in family_labels(fams, gov) if lbl["cpu"] == "3"] == []
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="2") == 4700.020e6
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="3") == 3600e6  # /proc/cpuinfo fallback
    assert family_value(fams, "mevwatch_cpu_frequency_max_hertz", cpu="0") == 4900e6
    assert family_value(fams, "mevwatch_cpu_scaling_frequency_max_hertz", cpu="1") == 2400e6
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="ok") == 1
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="virtual_machine") == 0
    assert family_value(fams, "mevwatch_cpu_core_throttles_total", cpu="2") == 12
    assert family_value(fams, "mevwatch_cpu_core_throttled_seconds_total", cpu="0") == 1.5
    assert family_labels(fams, "mevwatch_cpu_package_throttles_total") == [{"package": "0"}]
    assert family_value(fams, "mevwatch_cpu_package_throttles_total", package="0") == 34
    assert family_value(fams, "mevwatch_cpu_load_average", window="1m") == 7.52
    assert family_value(fams, "mevwatch_cpu_logical_processors") == 4
    assert family_value(fams, "mevwatch_cpu_load_per_cpu", window="1m") == pytest.approx(7.52 / 4)
    assert family_value(fams, "mevwatch_cpu_procs_blocked") == 2
    assert family_value(fams, "mevwatch_cpu_pressure_ratio", kind="some", window="10s") == 0.25
    assert family_value(fams, "mevwatch_cpu_seconds_total", mode="user") == pytest.approx(1000000 / 100)
    # a share since boot would hide a current steal burst: none on the first run
    assert family_value(fams, "mevwatch_cpu_time_ratio", mode="steal") is None
    for fam in fams:
        assert fam.documentation, fam.name
        assert fam.samples, f"{fam.name} rendered without samples"


async def test_steal_and_iowait_ratios_between_runs(tmp_path: Path) -> None:
    procfs = tmp_path / "proc"
    shutil.copytree(FIX / "proc", procfs)
    collector = _collector(procfs=procfs)
    await collector.collect()
    (procfs / "stat").write_text("cpu  1000100 2000 300000 8000600 50150 0 10000 40150 0 0\n")
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_time_ratio", mode="steal") == pytest.approx(0.15)
    assert family_value(fams, "mevwatch_cpu_time_ratio", mode="iowait") == pytest.approx(0.15)
    assert family_value(fams, "mevwatch_cpu_time_ratio", mode="idle") == pytest.approx(0.6)
    assert family_value(fams, "mevwatch_cpu_procs_running") is None  # line absent this time


def _vm_tree(tmp_path: Path, cpuinfo: str) -> tuple[Path, Path]:
    procfs, sysfs = tmp_path / "proc", tmp_path / "sys"
    shutil.copytree(FIX / "proc", procfs)
    (procfs / "cpuinfo").write_text(cpuinfo)
    for n in (0, 1):
        (sysfs / "devices/system/cpu" / f"cpu{n}" / "topology").mkdir(parents=True)
    return procfs, sysfs


async def test_vm_without_cpufreq_says_why(tmp_path: Path) -> None:
    procfs, sysfs = _vm_tree(tmp_path, VM_CPUINFO)
    fams = await _collector(procfs=procfs, sysfs=sysfs).collect()
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="virtual_machine") == 1
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="ok") == 0
    assert family_labels(fams, "mevwatch_cpu_frequency_governor") == []
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="1") == pytest.approx(2596.126e6)
    assert family_value(fams, "mevwatch_cpu_source_status", source="thermal_throttle", status="missing") == 1


async def test_bare_metal_without_cpufreq_driver(tmp_path: Path) -> None:
    procfs, sysfs = _vm_tree(tmp_path, VM_CPUINFO.replace(" hypervisor", ""))
    fams = await _collector(procfs=procfs, sysfs=sysfs).collect()
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="no_driver") == 1
    # a Xen guest says so in sysfs even without the CPU flag
    (sysfs / "hypervisor").mkdir()
    (sysfs / "hypervisor" / "type").write_text("xen\n")
    fams = await _collector(procfs=procfs, sysfs=sysfs).collect()
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="virtual_machine") == 1


async def test_unreadable_cpufreq_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(sysfs: str, cpu: int) -> str | None:
        raise PermissionError(f"{sysfs}/devices/system/cpu/cpu{cpu}/cpufreq is not readable")

    monkeypatch.setattr(cpu_module, "cpufreq_dir", denied)
    fams = await _collector().collect()
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="unreadable") == 1
    assert family_labels(fams, "mevwatch_cpu_frequency_governor") == []


async def test_sysfs_layout_is_looked_up_again_when_the_online_cpus_change(tmp_path: Path) -> None:
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    shutil.copytree(FIX / "sys", sysfs)
    shutil.copytree(FIX / "proc", procfs)
    collector = _collector(procfs=procfs, sysfs=sysfs)
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_governor", cpu="3") is None
    # a driver binds to cpu3: the cached layout does not know its files yet
    shutil.copytree(sysfs / "devices/system/cpu/cpu0/cpufreq", sysfs / "devices/system/cpu/cpu3/cpufreq")
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_governor", cpu="3") is None
    # a CPU going offline or online changes the cpuN lines of /proc/stat: the layout is rebuilt
    stat = (procfs / "stat").read_text()
    (procfs / "stat").write_text("".join(line for line in stat.splitlines(True) if not line.startswith("cpu3 ")))
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_governor", cpu="3", governor="performance") == 1
    assert family_value(fams, "mevwatch_cpu_frequency_max_hertz", cpu="3") == 4900e6


def test_parse_proc_stat_lists_the_online_cpus() -> None:
    assert parse_proc_stat((FIX / "proc" / "stat").read_text()).online == (0, 1, 2, 3)
    assert parse_proc_stat("cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu2 1 2 3 4\nintr 5 6\n").online == (0, 2)


def test_cpuinfo_clock_is_fixed_without_aperfmperf_or_without_clocks() -> None:
    bare = (FIX / "proc" / "cpuinfo").read_text()
    assert not cpuinfo_clock_is_fixed(bare, parse_cpuinfo(bare)[0])  # APERF/MPERF: a measured clock
    assert cpuinfo_clock_is_fixed(VM_CPUINFO, parse_cpuinfo(VM_CPUINFO)[0])  # the TSC clock of the VM
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n"
    assert cpuinfo_clock_is_fixed(arm, parse_cpuinfo(arm)[0])


async def _cpuinfo_reads(collector: CpuCollector, runs: int, monkeypatch: pytest.MonkeyPatch) -> int:
    read: list[str] = []
    real = _host.read_text_status

    def spy(path: str) -> tuple[str | None, str, str]:
        read.append(str(path))
        return real(path)

    monkeypatch.setattr(cpu_module, "read_text_status", spy)
    for _ in range(runs):
        await collector.collect()
    return sum(1 for p in read if p.endswith("/cpuinfo"))


async def test_a_fixed_cpuinfo_clock_is_read_once_per_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procfs, sysfs = _vm_tree(tmp_path, VM_CPUINFO)
    collector = _collector(procfs=procfs, sysfs=sysfs)
    assert await _cpuinfo_reads(collector, 3, monkeypatch) == 1
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="1") == pytest.approx(2596.126e6)
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="virtual_machine") == 1
    # a new layout (here: a CPU went offline) reads it again
    stat = (procfs / "stat").read_text()
    (procfs / "stat").write_text("".join(line for line in stat.splitlines(True) if not line.startswith("cpu3 ")))
    assert await _cpuinfo_reads(collector, 2, monkeypatch) == 1


async def test_a_measured_cpuinfo_clock_is_read_on_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procfs, sysfs = _vm_tree(tmp_path, VM_CPUINFO.replace(" hypervisor", " aperfmperf hypervisor"))
    collector = _collector(procfs=procfs, sysfs=sysfs)
    assert await _cpuinfo_reads(collector, 3, monkeypatch) == 3
    (procfs / "cpuinfo").write_text(VM_CPUINFO.replace("2596.126", "1800.000").replace(" hypervisor", " aperfmperf"))
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="1") == pytest.approx(1800e6)


async def test_sysfs_layout_is_looked_up_again_when_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_module, "LAYOUT_TTL", 0.0)  # every layout has expired by the next run
    sysfs = tmp_path / "sys"
    shutil.copytree(FIX / "sys", sysfs)
    collector = _collector(sysfs=sysfs)
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_max_hertz", cpu="3") is None
    shutil.copytree(sysfs / "devices/system/cpu/cpu0/cpufreq", sysfs / "devices/system/cpu/cpu3/cpufreq")
    fams = await collector.collect()  # online unchanged: only the expiry brings the new files in
    assert family_value(fams, "mevwatch_cpu_frequency_max_hertz", cpu="3") == 4900e6


async def test_cpuinfo_is_read_only_for_cpus_without_a_cpufreq_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIX / "sys", sysfs)
    # cpu3 has no cpufreq: its clock comes from cpuinfo, measured (aperfmperf) so read on every run
    assert await _cpuinfo_reads(_collector(sysfs=sysfs), 2, monkeypatch) == 2
    shutil.copytree(sysfs / "devices/system/cpu/cpu0/cpufreq", sysfs / "devices/system/cpu/cpu3/cpufreq")
    collector = _collector(sysfs=sysfs)
    assert await _cpuinfo_reads(collector, 2, monkeypatch) == 0
    fams = await collector.collect()
    assert family_value(fams, "mevwatch_cpu_frequency_hertz", cpu="3") is not None
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="ok") == 1


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("stat", None, "stat_missing"),
        ("stat", "intr 1 2 3\n", "stat_invalid"),
        ("loadavg", None, "loadavg_missing"),
        ("loadavg", "garbage\n", "loadavg_invalid"),
    ],
)
async def test_bad_core_files_are_collector_errors(
    tmp_path: Path, name: str, content: str | None, reason: str
) -> None:
    procfs = tmp_path / "proc"
    shutil.copytree(FIX / "proc", procfs)
    if content is None:
        (procfs / name).unlink()
    else:
        (procfs / name).write_text(content)
    with pytest.raises(CollectorError) as err:
        await _collector(procfs=procfs).collect()
    assert err.value.reason == reason
    assert name in err.value.message


async def test_missing_optional_files_give_status(tmp_path: Path) -> None:
    procfs = tmp_path / "proc"
    shutil.copytree(FIX / "proc", procfs)
    (procfs / "pressure" / "cpu").unlink()
    (procfs / "cpuinfo").unlink()
    fams = await _collector(procfs=procfs, sysfs=tmp_path / "empty-sys").collect()
    assert family_value(fams, "mevwatch_cpu_source_status", source="pressure", status="missing") == 1
    assert family_value(fams, "mevwatch_cpu_source_status", source="thermal_throttle", status="missing") == 1
    assert family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="no_driver") == 1
    assert family_value(fams, "mevwatch_cpu_load_average", window="15m") == 3.01


# --- live host ----------------------------------------------------------------------------------


async def test_collector_on_the_live_host() -> None:
    collector = _collector(procfs=Path("/proc"), sysfs=Path("/sys"))
    await collector.collect()
    await asyncio.sleep(0.3)
    fams = await collector.collect()
    ratios = {lbl["mode"]: family_value(fams, "mevwatch_cpu_time_ratio", **lbl)
              for lbl in family_labels(fams, "mevwatch_cpu_time_ratio")}
    assert set(ratios) == set(CPU_MODES)
    assert sum(v or 0.0 for v in ratios.values()) == pytest.approx(1.0)
    assert all(0.0 <= (v or 0.0) <= 1.0 for v in ratios.values())
    states = [family_value(fams, "mevwatch_cpu_frequency_scaling_status", status=s) for s in FREQUENCY_STATES]
    assert None not in states
    assert sum(s or 0.0 for s in states) == 1
    count = family_value(fams, "mevwatch_cpu_logical_processors")
    assert count is not None
    assert count >= 1
    if family_value(fams, "mevwatch_cpu_frequency_scaling_status", status="ok") == 0:
        assert family_labels(fams, "mevwatch_cpu_frequency_governor") == []
    load = family_value(fams, "mevwatch_cpu_load_average", window="1m")
    assert load is not None
    assert load >= 0
