"""The Grafana dashboard type-checks against the dashboard types Grafana publishes (@grafana/schema on npm).

The JSON becomes the initialiser of a TypeScript constant typed with @grafana/schema's Dashboard, its
panels with the options type of each panel kind (timeseries, stat, bargauge, table), and ``tsc --noEmit``
checks it: unknown keys, missing required fields and values outside an enum are errors.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.peers import REPO, missing

NODE = REPO / ".tools" / "node" / "node_modules"
TSC = NODE / ".bin" / "tsc"
SCHEMA = NODE / "@grafana" / "schema" / "dist" / "types"
DASHBOARD = REPO / "deploy" / "grafana" / "mevwatch.json"
PANEL_KINDS = {"timeseries": "timeseries", "stat": "stat", "bargauge": "bargauge", "table": "table"}


def typescript(dashboard: dict[str, Any]) -> str:
    imports = "\n".join(
        f'import type {{ Options as {kind.capitalize()}Options }} from '
        f'"{SCHEMA}/raw/composable/{cfg}/panelcfg/x/types.gen";' for kind, cfg in PANEL_KINDS.items())
    panels = " | ".join(f'PanelOf<"{kind}", {kind.capitalize()}Options>' for kind in PANEL_KINDS)
    return f"""import type {{ Dashboard, RowPanel, Panel }} from "{SCHEMA}/index";
{imports}

// JSON spells a member of a string enum by its value: accept exactly the values of each enum
type Json<T> = T extends string ? `${{T}}` : T extends (infer U)[] ? Json<U>[]
    : T extends object ? {{ [K in keyof T]: Json<T[K]> }} : T;
type PanelOf<K extends string, O> = Omit<Panel, "type" | "options"> & {{ type: K; options: Json<Partial<O>> }};
type AnyPanel = {panels} | (Omit<RowPanel, "panels"> & {{ panels: AnyPanel[] }});
type Checked = Omit<Json<Dashboard>, "panels"> & {{ panels: AnyPanel[] }};

const dashboard: Checked = {json.dumps(dashboard, indent=1)};
export default dashboard;
"""


def tsc(dashboard: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    if not TSC.exists() or not SCHEMA.is_dir():
        missing("typescript and @grafana/schema not installed in .tools/node (make deps installs them)")
    (tmp / "dashboard.ts").write_text(typescript(dashboard))
    (tmp / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "target": "es2022", "module": "esnext", "moduleResolution": "bundler",
        "skipLibCheck": True, "types": []}, "files": ["dashboard.ts"]}))
    return subprocess.run([str(TSC), "-p", str(tmp / "tsconfig.json")], capture_output=True, text=True, timeout=120)


def test_the_dashboard_type_checks_against_grafanas_schema(tmp_path: Path) -> None:
    out = tsc(json.loads(DASHBOARD.read_text()), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def _first(d: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(p for p in d["panels"] if p["type"] == kind)


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (lambda d: _first(d, "timeseries")["options"]["tooltip"].update(mode="everything"), "TS2322"),
        (lambda d: _first(d, "stat")["options"].update(colorMode="rainbow"), "TS2322"),
        (lambda d: d.update(refreshEvery="30s"), "TS2353"),
        (lambda d: _first(d, "timeseries")["gridPos"].pop("w"), "TS2741"),
    ],
    ids=["bad-enum-value", "bad-stat-color-mode", "unknown-dashboard-key", "missing-required-field"],
)
def test_the_check_rejects_what_grafanas_types_reject(break_it: Any, error: str, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    break_it(dashboard)
    out = tsc(dashboard, tmp_path)
    assert out.returncode != 0
    assert error in out.stdout, out.stdout
