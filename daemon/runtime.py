"""The running daemon: state DB, supervisor, HTTP server, systemd notifications, reload, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from typing import Any

import structlog

from mevwatch.aio import wait_for
from mevwatch.blocking import BlockingPool
from mevwatch.daemon.config import Config, ConfigError, load_config
from mevwatch.daemon.exposition import exposition_errors_seen, exposition_families
from mevwatch.daemon.flags import Overrides, Setting, settings
from mevwatch.daemon.http import HttpHooks, HttpServer
from mevwatch.daemon.malloc import MallocTrimmer
from mevwatch.daemon.state import StateDB, StateError, state_families
from mevwatch.daemon.store import SampleStore
from mevwatch.daemon.supervisor import HEARTBEAT_INTERVAL, Supervisor
from mevwatch.daemon.systemd import Notifier, watchdog_interval

__all__ = ["Daemon", "StartupError"]

log = structlog.get_logger("mevwatch.daemon")


class StartupError(Exception):
    """The daemon cannot start: unwritable state dir, bad web config, port in use."""


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        overrides: Overrides | None = None,
    ) -> None:
        self.config = config  # with the command line's overrides applied
        self.config_path = config_path
        self.overrides = overrides or Overrides()
        web = config.daemon.web
        self.listen: tuple[str, ...] = self.overrides.listen_addresses or (web.listen_address,)
        self.web_config_file = str(web.config_file) if web.config_file else None
        self.enable_lifecycle = web.enable_lifecycle
        self.store = SampleStore()
        self.pool = BlockingPool(config.daemon.blocking_threads)
        self.notifier = Notifier()
        self.state: StateDB | None = None
        self.supervisor: Supervisor | None = None
        self.http: HttpServer | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._bg: set[asyncio.Future[Any]] = set()
        self.components: list[Any] = []  # e.g. the alert engine; started after the supervisor

    def pool_has_hung_threads(self) -> bool:
        return self.pool.abandoned > 0

    def _open_state(self) -> StateDB:
        try:
            return StateDB.open_dir(self.config.state_dir, recover_corrupt=True)
        except StateError as exc:
            raise StartupError(f"{exc} (state_dir {self.config.state_dir}; set state_dir or STATE_DIRECTORY)") from None

    async def main(self) -> int:
        self.state = self._open_state()
        # The watchdog withholds its keep-alive when the heartbeat is older than two of its periods:
        # under a watchdog the heartbeat advances once per watchdog period, otherwise rarely.
        watchdog = watchdog_interval() if self.notifier.enabled else None
        beat = min(HEARTBEAT_INTERVAL, watchdog) if watchdog else HEARTBEAT_INTERVAL
        self.supervisor = Supervisor(self.config, self.store, self.state, self.pool, heartbeat_interval=beat)
        state = self.state
        self.supervisor.extra_meta += [lambda: state_families(state), exposition_families]
        self.supervisor.volatile += [lambda: state.failing_since, exposition_errors_seen]
        hooks = HttpHooks(status=self.status_rows, ready=lambda: self.supervisor is not None and self.supervisor.ready,
                          reload=self.reload, settings=self.settings, alerting=self.alerting,
                          alerts=self.alerts_view)
        try:
            self.http = HttpServer(self.store, hooks, self.listen, self.enable_lifecycle,
                                   web_config_file=self.web_config_file,
                                   telemetry_path=self.config.daemon.web.telemetry_path)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self.supervisor.extra_meta.append(self.http.meta_families)
        try:
            await self.http.start()
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"cannot listen on {', '.join(self.listen)}: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        await self.supervisor.start()
        await self._start_components()
        self.notifier.start_watchdog(lambda: self.supervisor.heartbeat if self.supervisor else 0.0)
        ready_task = asyncio.create_task(self._announce_ready())
        log.info("started", collectors=len(self.supervisor.collectors), listen=self.listen,
                 state_dir=str(self.config.state_dir), config=self.config.source)
        await self._stop.wait()
        ready_task.cancel()
        log.info("stopping")
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        try:
            await wait_for(self._shutdown(), timeout=4.0)
        except TimeoutError:
            log.warning("shutdown_slow", after_s=4.0)
        return 0

    def _reload_in_background(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _shutdown(self) -> None:
        for comp in reversed(self.components):
            with contextlib.suppress(Exception):
                await comp.stop()
        if self.http is not None:
            await self.http.stop()
        if self.supervisor is not None:
            await self.supervisor.shutdown()
        if self.state is not None:
            self.state.close()

    async def _start_components(self) -> None:
        """Components that plug into the store: the alert engine; and the heap trimmer."""
        trimmer = MallocTrimmer()
        await trimmer.start()
        self.components.append(trimmer)
        if self.config.daemon.alerts.enabled and self.state is not None:
            from mevwatch.alerts.engine import AlertEngine

            try:
                engine = AlertEngine(self.config.daemon.alerts, self.store, self.state)
                await engine.start()
            except StateError as exc:
                raise StartupError(f"alert engine: {exc}") from None
            self.components.append(engine)

    async def _announce_ready(self) -> None:
        assert self.supervisor is not None
        await self.supervisor.wait_first_round()
        if not gc.isenabled():  # `mevwatch run` starts without it (cli.cmd_run)
            gc.freeze()
            gc.enable()
        self.notifier.ready(self.summary())
        log.info("ready", summary=self.summary())
        if not self.notifier.enabled:
            return  # nobody reads STATUS=: no timer
        while True:
            await asyncio.sleep(10)
            self.notifier.status(self.summary())

    def alerts_view(self) -> dict[str, Any] | None:
        """The alert engine's verdicts for the landing page and /api/v1/*; None when no engine runs."""
        from mevwatch.alerts.api import CollectorsRead, engine_view
        from mevwatch.alerts.engine import AlertEngine

        engine = next((c for c in self.components if isinstance(c, AlertEngine)), None)
        if engine is None:
            return None
        enabled = {s.kind for s in self.config.collectors if s.options.enabled}
        disabled = frozenset(s.kind for s in self.config.collectors if s.kind not in enabled)
        declared = self.supervisor.declared if self.supervisor is not None else {}
        return engine_view(engine, CollectorsRead(declared, self.status_rows(), disabled))

    def settings(self) -> list[Setting]:
        """The running settings and where each came from (flag, config file, default), for the landing page."""
        return settings(self.config, self.overrides, self.config_path)

    def summary(self) -> str:
        rows = self.status_rows()
        failing = [f"{r['collector']}/{r['instance']}" for r in rows if r["success"] is False]
        text = f"{len(rows) - len(failing)}/{len(rows)} collectors ok"
        if failing:
            text += "; failing: " + ", ".join(failing[:5]) + (" ..." if len(failing) > 5 else "")
        return text

    def alerting(self) -> dict[str, Any]:
        """The alerting mode (standalone or fleet, see docs/fleet.md), the host label of this daemon and the
        URL its pages link back to."""
        alerts = self.config.daemon.alerts
        return {"enabled": alerts.enabled, "mode": alerts.mode, "host": alerts.host,
                "external_url": alerts.external_url}

    def status_rows(self) -> list[dict[str, Any]]:
        if self.supervisor is None:
            return []
        return [
            {
                "collector": st.kind,
                "instance": st.instance,
                "success": st.success,
                "stream": st.stream,
                "interval_seconds": st.interval,
                "last_success": st.last_success_wall or None,
                "last_error": st.last_error or None,
                "last_error_time": st.last_error_wall or None,
                "next_run": st.next_run_wall or None,
                "runs": st.runs,
            }
            for st in self.supervisor.status.values()
        ]

    async def reload(self) -> tuple[bool, str]:
        """Load the config file again; a bad file is rejected and the running config stays."""
        async with self._reload_lock:
            assert self.supervisor is not None
            self.notifier.reloading()
            try:
                # the web config first: a revoked password or certificate stops working at once
                web_ok, web_message = self.http.reload_web_config() if self.http is not None else (True, "")
                if not web_ok:
                    self.supervisor._publish_meta()
                ok, message = await self._reload_config()
                if not web_ok:
                    return False, web_message if ok else web_message + "\n" + message
                return ok, message
            finally:
                self.notifier.ready(self.summary())

    async def _reload_config(self) -> tuple[bool, str]:
        """The main config file: a bad one is rejected and the running config stays."""
        assert self.supervisor is not None
        if self.config_path is None:
            log.info("reload_skipped", reason="running on the embedded default config")
            self.supervisor._publish_meta()
            return True, "no config file: embedded default stays"
        try:
            new = self.overrides.apply(load_config(self.config_path))
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("config_reload_rejected", error=str(issue))
            self.supervisor.reload_ok = False
            self.supervisor._publish_meta()
            return False, "config rejected, running config kept:\n" + str(exc)
        self.config = new
        await self.supervisor.swap(new)
        for comp in self.components:
            await comp.stop()
        self.components.clear()
        await self._start_components()
        self.supervisor.reload_ok = True
        import time

        self.supervisor.reload_wall = time.time()
        self.supervisor._publish_meta()
        log.info("config_reloaded", collectors=len(self.supervisor.collectors))
        return True, "config reloaded"
