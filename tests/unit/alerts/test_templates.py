"""Alert templates: labels, humanized values, and the expressions that are refused."""

from __future__ import annotations

import pytest

from mevwatch.alerts.templates import check_template, render_template


def test_templates_render_labels_and_humanized_values() -> None:
    labels = {"host": "h1", "mountpoint": "/data"}
    assert render_template("{{ $labels.mountpoint }} on {{$labels.host}}", labels, 0) == "/data on h1"
    assert render_template("{{ $value | humanizePercentage }}", labels, 0.873) == "87.3%"
    assert render_template("{{ $value | humanizeDuration }}", labels, 3725) == "1h2m5s"
    assert render_template("{{ $value | humanize }}", labels, 1_500_000) == "1.5M"
    assert render_template("{{ $value }} / {{ $labels.nope }}", labels, 2.5) == "2.5 / "
    with pytest.raises(ValueError, match="unsupported template"):
        check_template("{{ .Labels.x }}")
    with pytest.raises(ValueError, match="unclosed"):
        check_template("{{ $value ")
