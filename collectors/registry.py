"""The collector registry: every collector class by its kind, a kind being its module's name.

A collector module registers its class with ``@register``; the registry imports a kind's module
only when a config names it (``get_kind``), or every collector module for docs and checks
(``all_kinds``). A module that fails to import is reported where it is used, never fatal for the others.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

import structlog

from mevwatch.collectors.base import Collector

__all__ = ["IMPORT_ERRORS", "NOT_KINDS", "REMOVED_KINDS", "all_kinds", "get_kind", "kind_names", "register"]

#: modules of the collectors package that are not collector kinds (the contract and this registry)
NOT_KINDS = frozenset({"base", "registry"})

#: kinds older versions had, with how to write their entries now (a config naming one is an error)
REMOVED_KINDS: dict[str, str] = {
    "disk": "the disk kind is split into three kinds with the same metrics: put mount_points_exclude, "
    "fs_types_exclude, statvfs_timeout, statvfs_inline_fs_types and fill_window under `- filesystems:`; "
    "watch_dirs (renamed paths), top_files, scan_max_files and scan_time_budget under `- directories:` "
    "(scan_interval becomes its interval); backups (renamed patterns) under `- backups:`. "
    "`- disk: {}` becomes `- filesystems: {}`, `- directories: {}` and `- backups: {}`",
}

_REGISTRY: dict[str, type[Collector[Any]]] = {}
#: collector modules that failed to import, by module name (== kind), with the error
IMPORT_ERRORS: dict[str, str] = {}
_DISCOVERED = False

C = TypeVar("C", bound=type[Collector[Any]])


def register(cls: C) -> C:
    """Class decorator: make a collector available under its ``kind``."""
    kind = cls.kind
    existing = _REGISTRY.get(kind)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"collector kind {kind!r} registered twice: {existing!r} and {cls!r}")
    _REGISTRY[kind] = cls
    return cls


def kind_names() -> list[str]:
    """Every shipped collector kind from the module names alone (kind == module name): nothing is imported,
    so ``mevwatch run`` does not carry the modules of collectors it does not run."""
    import mevwatch.collectors as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if _is_kind_module(m.name))


def _is_kind_module(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_") and name not in NOT_KINDS


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for name in kind_names():
        try:
            importlib.import_module(f"mevwatch.collectors.{name}")
        except Exception as exc:  # one broken collector module must not take the others down
            IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
            structlog.get_logger("mevwatch.collectors").error(
                "collector_import_failed", module=name, error=IMPORT_ERRORS[name]
            )


def all_kinds() -> dict[str, type[Collector[Any]]]:
    """Every registered collector class by kind (imports each collector module once)."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_kind(kind: str) -> type[Collector[Any]] | None:
    """The collector class of ``kind``, importing only its own module (kind == module name)."""
    cls = _REGISTRY.get(kind)
    if cls is not None or kind in IMPORT_ERRORS:
        return cls
    if _is_kind_module(kind):
        try:
            importlib.import_module(f"mevwatch.collectors.{kind}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mevwatch.collectors.{kind}":
                IMPORT_ERRORS[kind] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a broken module: reported where the config uses it
            IMPORT_ERRORS[kind] = f"{type(exc).__name__}: {exc}"
        cls = _REGISTRY.get(kind)
        if cls is not None:
            return cls
    _discover()  # a kind registered under another module name
    return _REGISTRY.get(kind)
