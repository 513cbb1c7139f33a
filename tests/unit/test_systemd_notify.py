"""sd_notify messages: STATUS= is sent again only when it changed."""

from __future__ import annotations

import pytest

from mevwatch.daemon.systemd import Notifier


class Capture:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, text: str) -> None:
        self.sent.append(text)


def test_status_is_sent_only_when_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    cap = Capture()
    n._n = cap
    n.ready("1/1 collectors ok")
    n.status("1/1 collectors ok")
    n.status("0/1 collectors ok; failing: cpu/default")
    n.status("0/1 collectors ok; failing: cpu/default")
    n.ready("0/1 collectors ok; failing: cpu/default")  # READY=1 (after a reload) is always sent
    n.status("1/1 collectors ok")
    assert cap.sent == [
        "READY=1\nSTATUS=1/1 collectors ok",
        "STATUS=0/1 collectors ok; failing: cpu/default",
        "READY=1\nSTATUS=0/1 collectors ok; failing: cpu/default",
        "STATUS=1/1 collectors ok",
    ]
