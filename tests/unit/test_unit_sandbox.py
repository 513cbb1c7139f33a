"""The shipped unit and the example config agree: everything the example reads is visible inside the unit's
sandbox, and what it writes is writable (PrivateTmp, ProtectHome, ProtectSystem, ReadOnlyPaths,
ReadWritePaths, InaccessiblePaths, TemporaryFileSystem)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel

from mevwatch.daemon.config import Config, load_config, load_config_text
from tests.support.peers import REPO
from tests.support.unitfile import unit_settings

UNIT = REPO / "deploy" / "systemd" / "mevwatch.service"
EXAMPLE = REPO / "config.example.yaml"
NOT_FILESYSTEM = {"telemetry_path"}  # URL paths, not file paths


def _yes(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("yes", "true", "1", "on")  # type: ignore[index]


def _paths(values: list[str] | None) -> list[PurePosixPath]:
    # "-/x" (ignore if missing) and "+/x" (relative to the root) name the same path for this purpose
    return [PurePosixPath(p.lstrip("-+")) for v in values or [] for p in v.split() if p.lstrip("-+")]


def _under(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    return any(path == r or r in path.parents for r in roots)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What systemd shows the service of the host's file tree (the subset of options the unit uses)."""

    hidden: list[PurePosixPath]  # empty or absent inside the sandbox
    writable: list[PurePosixPath]
    all_read_only: bool

    @classmethod
    def of(cls, unit_text: str) -> Sandbox:
        s = unit_settings(unit_text)
        hidden = _paths(s.get("InaccessiblePaths")) + _paths(s.get("TemporaryFileSystem"))
        if _yes(s.get("PrivateTmp")):
            hidden += [PurePosixPath("/tmp"), PurePosixPath("/var/tmp")]
        home = (s.get("ProtectHome") or ["no"])[-1].lower()
        if home in ("yes", "true", "tmpfs"):
            hidden += [PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user")]
        writable = _paths(s.get("ReadWritePaths")) + [PurePosixPath("/var/lib") / d for v in
                                                      s.get("StateDirectory", []) for d in v.split()]
        strict = (s.get("ProtectSystem") or ["no"])[-1].lower() == "strict"
        all_ro = strict or PurePosixPath("/") in _paths(s.get("ReadOnlyPaths"))
        return cls(hidden, writable, all_ro)

    def problem(self, path: str, write: bool = False) -> str | None:
        # a glob is as visible as its literal part: /tmp/mev_* lives in /tmp
        literal = PurePosixPath(path.split("*")[0].split("?")[0].split("[")[0] or "/")
        if _under(literal, self.hidden) or any(literal in h.parents for h in self.hidden if "*" in path):
            return f"{path} is hidden by the sandbox"
        if write and self.all_read_only and not _under(literal, self.writable):
            return f"{path} is written but read-only in the sandbox"
        return None


def _walk(obj: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            if name not in NOT_FILESYSTEM:
                yield from _walk(getattr(obj, name), f"{where}.{name}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(obj, Path) or (isinstance(obj, str) and obj.startswith("/")):
        yield where, str(obj)


def config_paths(cfg: Config) -> Iterator[tuple[str, str]]:
    """(field path, file path) of every absolute path the config reads."""
    daemon = cfg.daemon.model_copy(update={"collectors": [], "state_dir": None})
    yield from _walk(daemon, "")
    for i, spec in enumerate(cfg.collectors):
        yield from _walk(spec.options, f"collectors[{i}].{spec.kind}")


def sandbox_problems(unit_text: str, cfg: Config) -> list[str]:
    box = Sandbox.of(unit_text)
    out = [f"{where}: {p}" for where, path in config_paths(cfg) if (p := box.problem(path))]
    if cfg.daemon.state_dir is not None and (p := box.problem(str(cfg.daemon.state_dir), write=True)):
        out.append(f"state_dir: {p}")
    return out


def test_everything_the_example_reads_is_visible_to_the_shipped_unit() -> None:
    cfg = load_config(EXAMPLE)
    assert len(list(config_paths(cfg))) > 10  # the example does watch files
    assert sandbox_problems(UNIT.read_text(), cfg) == []


SHIPPED = UNIT.read_text()


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (SHIPPED.replace("PrivateTmp=no", "PrivateTmp=yes"),
         "collectors[0].directories.paths[0]: /tmp/mev_* is hidden"),
        (SHIPPED, "collectors[1].textfile.directories[0]: /root/prom is hidden"),  # ProtectHome=yes
        (SHIPPED.replace("[Service]\n", "[Service]\nInaccessiblePaths=-/etc/mev\n"),
         "collectors[2].integrity.globs[0]: /etc/mev/** is hidden"),
    ],
    ids=["PrivateTmp", "ProtectHome", "InaccessiblePaths"],
)
def test_the_check_sees_each_sandbox_option_hide_a_path(unit: str, expected: str) -> None:
    cfg = load_config_text(
        "collectors:\n"
        '  - directories: {paths: ["/tmp/mev_*"]}\n'
        "  - textfile: {directories: [/root/prom]}\n"
        '  - integrity: {files: [], globs: ["/etc/mev/**"]}\n', "c.yaml")
    problems = sandbox_problems(unit, cfg)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_state_dir_outside_the_writable_paths_is_reported() -> None:
    cfg = load_config_text("state_dir: /srv/mevwatch\ncollectors: []\n", "c.yaml")
    assert sandbox_problems(UNIT.read_text(), cfg) == ["state_dir: /srv/mevwatch is written but read-only in the "
                                                       "sandbox"]
    ok = load_config_text("state_dir: /var/lib/mevwatch\ncollectors: []\n", "c.yaml")
    assert sandbox_problems(UNIT.read_text(), ok) == []
