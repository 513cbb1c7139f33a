"""Shared fixtures: a fresh state DB per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.daemon.state import StateDB


@pytest.fixture
def state_db(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB.open_dir(tmp_path / "state")
    yield db
    db.close()
