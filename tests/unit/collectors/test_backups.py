"""The backups collector: the newest file by mtime, its age and size, and missing patterns."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.backups import BackupsCollector, BackupsOptions, find_newest_backup
from mevwatch.collectors.base import CollectorContext
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.docgen import declaration_problems
from tests.support.families import family_state, family_value


def make(**opts: Any) -> BackupsCollector:
    ctx = CollectorContext("backups", "test", interval=1.0, timeout=5.0)
    return BackupsCollector(ctx, BackupsOptions.model_validate(opts))


# --- backups -------------------------------------------------------------------------------


def test_newest_backup_is_chosen_by_mtime_with_its_size(tmp_path: Path) -> None:
    now = time.time()
    for name, age, size in [("mev-full-a.tar.gz", 86400 * 3, 10), ("mev-full-b.tar.gz", 3600, 20),
                            ("mev-full-c.tar.gz", 86400, 30)]:
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age, now - age))
    (tmp_path / "mev-full-dir").mkdir()  # not a regular file: ignored
    info = find_newest_backup(str(tmp_path / "mev-full-*"))
    assert info.status == "ok"
    assert info.files == 3
    assert info.newest_path.endswith("mev-full-b.tar.gz")
    assert info.newest_size == 20
    assert info.newest_mtime == pytest.approx(now - 3600, abs=1)


async def test_backup_metrics_and_missing_backups(tmp_path: Path) -> None:
    p = tmp_path / "mev-full-1"
    p.write_bytes(b"x" * 1234)
    old = time.time() - 7200
    os.utime(p, (old, old))
    good, none_yet, no_dir = str(tmp_path / "mev-full-*"), str(tmp_path / "mev-none-*"), "/no/such/dir/mev-full-*"
    fams = await make(patterns=[good, none_yet, no_dir]).collect()
    assert family_value(fams, "mevwatch_backup_size_bytes", pattern=good) == 1234.0
    age = family_value(fams, "mevwatch_backup_age_seconds", pattern=good)
    assert age is not None
    assert 7199 < age < 7300
    assert family_value(fams, "mevwatch_backup_last_modified_timestamp_seconds", pattern=good) == pytest.approx(old)
    assert family_state(fams, "mevwatch_backup_status", pattern=good) == "ok"
    assert family_state(fams, "mevwatch_backup_status", pattern=none_yet) == "missing"
    assert family_state(fams, "mevwatch_backup_status", pattern=no_dir) == "missing"
    assert family_value(fams, "mevwatch_backup_age_seconds", pattern=none_yet) is None
    assert declaration_problems(fams, BackupsCollector.metrics) == []


# --- options -------------------------------------------------------------------------------


def test_defaults_cover_the_runbook_pattern() -> None:
    assert BackupsOptions().patterns == ["/backup/mev-full-*"]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{patterns: [/b/x, /b/x]}", "collectors[0].backups.patterns", "duplicate path"),
        ("{patterns: [b/x]}", "collectors[0].backups.patterns", "not an absolute path"),
        ("{stall_timeout: 0s}", "collectors[0].backups.stall_timeout", "greater than 0"),
    ],
)
def test_bad_options_are_config_errors_with_field_path(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - backups: {body}\n")
    text = str(err.value)
    assert path in text, text
    assert message in text, text
