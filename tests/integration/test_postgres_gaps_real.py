"""A check the postgres collector cannot make is a visible monitoring gap, never silence: a server without
pg_stat_statements (PostgresSlowStatements cannot fire) raises MonitoringGapStatementStats on every screen,
on a throwaway cluster judged by a real daemon, and the gap clears once the extension is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pgcluster import pg_cluster
from tests.support.screens import firing_alert, paged_daemon, screens_agree, screens_cleared
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.peer("postgresql")


def _resolved(hook: WebhookReceiver) -> list[dict[str, object]]:
    return [a for r in hook.delivered() for a in r.json()["alerts"]
            if a["status"] == "resolved" and a["labels"]["alertname"] == "MonitoringGapStatementStats"]


def test_statement_times_that_cannot_be_read_are_a_monitoring_gap_until_they_can(tmp_path: Path) -> None:
    with pg_cluster() as c:  # no shared_preload_libraries, no extension: statement times are unreadable
        collectors = (f"collectors:\n  - postgres: {{interval: 1s, min_connections: 1, max_connections: 1,"
                      f" targets: [{{dsn: '{c.dsn()}'}}]}}\n")
        override = "  rule_overrides:\n    MonitoringGapStatementStats: {for: 0s}\n"  # the default waits 10 min
        with paged_daemon(tmp_path, collectors, extra=override) as (d, hook):
            d.wait_value("mevwatch_postgres_up", 1, timeout=20)
            screens = screens_agree(d, hook, "MonitoringGapStatementStats")
            assert screens.alert["labels"]["severity"] == "warning"
            assert screens.alert["annotations"]["summary"] == (
                f"Statement times of 127.0.0.1:{c.port} cannot be read on mev-host-1: "
                "PostgresSlowStatements cannot fire")
            assert "pg_stat_statements" in screens.alert["annotations"]["description"]
            d.wait_value("mevwatch_postgres_extension_available", 0, extension="pg_stat_statements")
            # the fix the page points to: preload the library and create the extension
            c.stop("fast")
            c.settings["shared_preload_libraries"] = "pg_stat_statements"
            c.start()
            d.wait_value("mevwatch_postgres_up", 1, timeout=20)
            # the library alone is not enough: statement times are still unreadable, the gap is (again) firing
            firing_alert(d, "MonitoringGapStatementStats", 20)
            resolved = len(_resolved(hook))
            c.psql("CREATE EXTENSION pg_stat_statements")
            screens_cleared(d, hook, "MonitoringGapStatementStats", timeout=30)
            assert len(_resolved(hook)) > resolved  # cleared by the extension, not by the restart
            d.wait_value("mevwatch_postgres_extension_available", 1, extension="pg_stat_statements")
