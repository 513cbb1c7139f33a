"""Running mevwatch as a real subprocess in tests, and reading its /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.peers import free_port, stop_process, wait_port

__all__ = ["RunningDaemon", "parse_metrics", "sample_value"]


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample_value(text: str, name: str, **labels: str) -> float | None:
    for (n, lbl), v in parse_metrics(text).items():
        if n == name and all(dict(lbl).get(k) == val for k, val in labels.items()):
            return v
    return None


class RunningDaemon:
    """``mevwatch run`` on a free port with a config file written to ``tmp``."""

    def __init__(self, tmp: Path, config_text: str, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.config = tmp / "mevwatch.yaml"
        self.config.write_text(config_text)
        self.log = tmp / "mevwatch.log"
        self.argv = [sys.executable, "-m", "mevwatch", "run", "--config", str(self.config),
                     "--web.listen-address", f"127.0.0.1:{self.port}", *(extra_args or [])]
        self.env = {**os.environ, "STATE_DIRECTORY": str(tmp / "state"), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RunningDaemon:
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        try:
            wait_port(self.port, 20.0, self.proc)
        except Exception:
            self.__exit__()
            raise RuntimeError("mevwatch did not start:\n" + self.log.read_text(errors="replace")[-4000:]) from None
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(resp.read().decode())

    def _poll(self, name: str, done: Callable[[float | None], bool], timeout: float,
              labels: dict[str, str]) -> tuple[bool, float | None]:
        """Read ``name{labels}`` from /metrics every 0.1 s until ``done(value)``: (done, last value)."""
        deadline = time.monotonic() + timeout
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = sample_value(self.get(), name, **labels)
            if done(seen):
                return True, seen
            time.sleep(0.1)
        return False, seen

    def wait_for(self, name: str, timeout: float = 10.0, **labels: str) -> float:
        ok, seen = self._poll(name, lambda v: v is not None, timeout, labels)
        if not ok or seen is None:
            raise AssertionError(f"{name}{labels} not in /metrics after {timeout}s")
        return seen

    def wait_value(self, name: str, value: float, timeout: float = 10.0, **labels: str) -> None:
        """Wait until /metrics shows ``name{labels}`` equal to ``value`` (a run that failed under load retries)."""
        ok, seen = self._poll(name, lambda v: v == value, timeout, labels)
        if not ok:
            raise AssertionError(f"{name}{labels} is {seen}, not {value}, after {timeout}s")

    def wait_at_least(self, name: str, value: float, timeout: float = 10.0, **labels: str) -> float:
        """Wait until /metrics shows ``name{labels}`` at ``value`` or more; the value seen."""
        ok, seen = self._poll(name, lambda v: v is not None and v >= value, timeout, labels)
        if not ok or seen is None:
            raise AssertionError(f"{name}{labels} is {seen}, not at least {value}, after {timeout}s")
        return seen
