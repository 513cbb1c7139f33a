"""``mevwatch integrity baseline|verify|accept|log``: the file integrity baseline from the command line.

Exit codes: 0 clean (or done), 1 a violation or a tampered baseline, 2 an error (config, no baseline, DB).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict
from typing import Any

from mevwatch.collectors._integrity_baseline import Baseline, BaselineStore, who_am_i
from mevwatch.collectors._integrity_diff import CopyStore
from mevwatch.collectors._integrity_scan import Violation, WatchSet, compare, scan, verify, verify_each
from mevwatch.collectors.integrity import IntegrityOptions, read_hmac_key, report_changes, watch_set
from mevwatch.daemon.cli import add_config_argument, load_or_default
from mevwatch.daemon.config import ConfigError
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.families import label_text as shown

__all__ = ["register"]


class _Fail(Exception):
    """A usage or environment error: printed, exit 2."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("integrity", help="file integrity: create, verify and accept the baseline")
    sub = p.add_subparsers(dest="integrity_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        add_config_argument(sp)
        sp.add_argument("--instance", help="integrity collector instance (default: the first in the config)")

    b = sub.add_parser("baseline", help="record the current state of the watched files as the baseline")
    common(b)
    b.add_argument("--force", action="store_true", help="replace an existing baseline")
    b.set_defaults(func=cmd_baseline)

    v = sub.add_parser("verify", help=(
        "compare the watched files with the baseline, with the masked diff of each changed report_changes file; "
        "exit 1 on any difference"))
    common(v)
    v.add_argument("--json", action="store_true", help="print a JSON document instead of lines")
    v.add_argument("--quick", action="store_true",
                   help="hash only files whose size, mtime, ctime or inode changed")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("accept", help="re-baseline the given paths (or all) after an intended change")
    common(a)
    a.add_argument("paths", nargs="*", metavar="PATH", help="paths to accept (default: the whole watched set)")
    a.set_defaults(func=cmd_accept)

    lg = sub.add_parser("log", help="who created or accepted the baseline, and when")
    common(lg)
    lg.add_argument("--limit", type=int, default=20)
    lg.set_defaults(func=cmd_log)


def _setup(args: argparse.Namespace) -> tuple[IntegrityOptions, WatchSet, BaselineStore, StateDB]:
    try:
        cfg = load_or_default(args.config)
    except ConfigError as exc:
        raise _Fail("\n".join(str(i) for i in exc.issues)) from None
    specs = [s for s in cfg.collectors if s.kind == "integrity"]
    if args.instance:
        specs = [s for s in specs if s.options.instance == args.instance]
    if not specs:
        which = f" with instance {args.instance!r}" if args.instance else ""
        raise _Fail(f"no integrity collector{which} in {cfg.source}")
    opts = specs[0].options
    assert isinstance(opts, IntegrityOptions)
    try:
        key = read_hmac_key(opts)
        db = StateDB.open_dir(cfg.state_dir)
        store = BaselineStore(db, opts.instance, key)
    except (ValueError, StateError) as exc:
        raise _Fail(str(exc)) from None
    return opts, watch_set(opts, cfg.daemon.paths.rootfs), store, db


def _sync_copies(opts: IntegrityOptions, ws: WatchSet, store: BaselineStore, db: StateDB) -> None:
    """Copies of the baseline versions of the report_changes files, as the daemon keeps them: a change made
    before the daemon first looked still gets its diff."""
    report = report_changes(opts)
    if report:
        report.sync_copies(CopyStore(db, opts.instance), store.load().records, (), ws.real)


def _shown_path_to_name(path: str) -> str:
    """A path as labels and this command show it (``x\\xff``) back to the name it stands for."""
    if "\\x" not in path:
        return path
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), os.fsencode(path))
    return os.fsdecode(raw)


def _name_for(path: str, base: Baseline) -> str:
    """``path``, or the name it shows (``x\\xff`` as a label writes it) when only that one exists."""
    if path in base.records or os.path.lexists(path):
        return path
    name = _shown_path_to_name(path)
    return name if name in base.records or os.path.lexists(name) else path


def _run(args: argparse.Namespace, fn: Any) -> int:
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 must not end the command
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        code: int = fn(args)
    except _Fail as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


def _load(store: BaselineStore) -> Baseline:
    base = store.load()
    if not base.present:
        raise _Fail(
            f"no baseline for integrity instance {store.instance!r}; create it with `mevwatch integrity baseline`"
        )
    if base.corrupt:
        shown = "; ".join(base.corrupt[:10])
        raise _Fail(f"baseline is corrupt ({len(base.corrupt)} problem(s): {shown}); recreate it with "
                    "`mevwatch integrity baseline --force` after checking the files")
    return base


def cmd_baseline(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        opts, ws, store, db = _setup(args)
        existing = store.load()
        if existing.present and not args.force:
            raise _Fail("a baseline exists already; accept intended changes with `mevwatch integrity accept`, "
                        "or replace it with --force")
        records, _ = verify(ws, {}, follow_symlinks=opts.follow_symlinks, threads=opts.hash_threads,
                            chunk=opts.chunk_size)
        for path in ws.files:
            if path not in records:
                print(f"warning: {shown(path)} does not exist; it is not in the baseline", file=sys.stderr)
        unreadable = [r.path for r in records.values() if r.error]
        for path in unreadable:
            print(f"warning: {shown(path)} is unreadable; its content is not in the baseline", file=sys.stderr)
        store.replace_all(records, who_am_i(), "baseline")
        _sync_copies(opts, ws, store, db)
        print(f"baseline of {len(records)} path(s) written to {db.path} (instance {store.instance})")
        return 0

    return _run(args, go)


def _violation_json(v: Violation) -> dict[str, str]:
    return asdict(v)


def cmd_verify(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        opts, ws, store, db = _setup(args)
        base = _load(store)
        report = report_changes(opts)
        copies = CopyStore(db, opts.instance) if report else None
        t0 = time.monotonic()
        checked = 0
        violations: list[Violation] = []
        diffs: dict[str, str] = {}  # report_changes: a changed file's masked diff, or why there is none
        for path, _, exists, found in verify_each(ws, base.records, quick=args.quick,
                                                  follow_symlinks=opts.follow_symlinks, threads=opts.hash_threads,
                                                  chunk=opts.chunk_size):
            checked += exists
            violations.extend(found)
            if found and report:
                diffs[path] = report.diff(path, found, base.records.get(path), copies, ws.real(path))
        elapsed = time.monotonic() - t0
        diffs = {p: d for p, d in diffs.items() if d}
        if args.json:
            doc = {
                "instance": store.instance,
                "clean": not violations and not base.tampered,
                "baseline_tampered": base.tampered,
                "baseline_created_at": base.created_at,
                "files_checked": checked,
                "duration_seconds": round(elapsed, 6),
                "violations": [_violation_json(v) for v in violations],
                "diffs": {shown(p): d for p, d in sorted(diffs.items())},
            }
            print(json.dumps(doc, indent=2))
        else:
            if base.tampered:
                print("BASELINE TAMPERED: the baseline does not match its HMAC; its records cannot be trusted")
            for v in violations:
                print(f"{shown(v.path)}\t{v.kind}\texpected: {shown(v.expected)}\tfound: {shown(v.found)}")
            for path, diff in sorted(diffs.items()):  # a diff names its file; a reason is told beside it
                print(f"{shown(path)}\t{diff}" if diff.startswith("no diff:") else diff)
            state = "clean" if not violations else f"{len(violations)} violation(s)"
            print(f"{state}: {checked} path(s) checked in {elapsed:.2f}s", file=sys.stderr)
        return 1 if violations or base.tampered else 0

    return _run(args, go)


def cmd_accept(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        opts, ws, store, db = _setup(args)
        base = store.load()
        if not base.present:
            raise _Fail("no baseline to accept into; create it with `mevwatch integrity baseline`")
        who = who_am_i()
        if not args.paths:
            records, violations = verify(ws, base.records, follow_symlinks=opts.follow_symlinks,
                                         threads=opts.hash_threads, chunk=opts.chunk_size)
            store.replace_all(records, who, "accept")
            _sync_copies(opts, ws, store, db)
            print(f"accepted the whole watched set ({len(records)} path(s), {len(violations)} difference(s))")
            return 0
        paths = [os.path.normpath(os.path.abspath(p)) for p in args.paths]
        paths = [_name_for(p, base) for p in paths]
        unknown = [shown(p) for p in paths if p not in base.records and not ws.covers(p)]
        if unknown:
            raise _Fail(f"not in the watched set or the baseline: {', '.join(unknown)}")
        found = scan(ws, paths, follow_symlinks=opts.follow_symlinks, threads=opts.hash_threads,
                     chunk=opts.chunk_size)
        changes = {p: found.get(p) for p in paths}
        store.update(changes, who, "accept")
        _sync_copies(opts, ws, store, db)
        for p in paths:
            diffs = compare(p, base.records.get(p), found.get(p))
            kinds = ", ".join(v.kind for v in diffs) or "no difference"
            print(f"accepted {shown(p)} ({kinds})")
        by = f"{who.user} (uid {who.uid}" + (f", sudo by {who.sudo_user})" if who.sudo_user else ")")
        print(f"{len(paths)} path(s) re-baselined by {by}")
        return 0

    return _run(args, go)


def cmd_log(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        _, _, store, _ = _setup(args)
        for e in store.accept_log(args.limit):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at))
            sudo = f" sudo_user={e.sudo_user}" if e.sudo_user else ""
            print(f"{when} {e.action} by {e.user} (uid {e.uid}){sudo}: {' '.join(map(shown, e.paths)) or '(all)'}")
        return 0

    return _run(args, go)
