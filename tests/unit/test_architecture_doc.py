"""docs/architecture.md names every module of the package, so its module table is the code's."""

from __future__ import annotations

from tests.support.peers import REPO
from tests.unit.test_import_graph import PACKAGES

DOC = REPO / "docs" / "architecture.md"


def test_every_module_is_in_the_module_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    modules = []
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if folder == "mevwatch" and rel.parts[1] in PACKAGES:
                continue  # the symlinks to daemon/, collectors/, alerts/
            modules.append(rel.as_posix())
    assert len(modules) > 80
    assert [m for m in modules if f"`{m}`" not in text] == []
