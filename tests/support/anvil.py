"""A real Ethereum node for the chain tests: ``anvil`` on a free loopback port.

Use the fixtures by importing them into a test module (pytest finds imported fixtures)::

    from tests.support.anvil import anvil, anvil_no_mining  # noqa: F401

    def test_head(anvil: Anvil) -> None:
        anvil.rpc("eth_blockNumber")  # blocking helper; anvil.url / anvil.ws_url for clients

``anvil`` is session-scoped (one node for the whole run: don't change its chain state in ways
other tests would notice, or use ``evm_snapshot``/``evm_revert``); ``anvil_no_mining`` is a
module-scoped node started with ``--no-mining`` so sent transactions stay pending.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.peers import free_port, need_binary, start_process, stop_process

__all__ = ["Anvil", "anvil", "anvil_no_mining", "start_anvil"]

# anvil's first default account (well-known test mnemonic; unlocked on anvil).
DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@dataclass(slots=True)
class Anvil:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rpc(self, method: str, params: list[Any] | None = None, timeout: float = 5.0) -> Any:
        """A blocking JSON-RPC call straight to anvil (for test setup); raises on an error answer."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.loads(resp.read())
        if doc.get("error"):
            raise RuntimeError(f"anvil {method}: {doc['error']}")
        return doc["result"]

    def stop(self) -> None:
        stop_process(self.proc)


def start_anvil(*extra_args: str, timeout: float = 20.0) -> Anvil:
    """Start anvil on a free port and wait until it answers JSON-RPC (skips when anvil is missing)."""
    binary = need_binary("anvil")
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="anvil-", suffix=".log")[1])
    proc = start_process(
        [binary, "--host", "127.0.0.1", "--port", str(port), *extra_args], port=port, log=log, timeout=timeout
    )
    node = Anvil(port, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.rpc("eth_chainId", timeout=1.0)
            return node
        except (OSError, urllib.error.URLError, ValueError):
            if time.monotonic() > deadline or proc.poll() is not None:
                node.stop()
                raise RuntimeError(f"anvil did not answer:\n{log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()
        node.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def anvil_no_mining() -> Iterator[Anvil]:
    node = start_anvil("--no-mining")
    try:
        yield node
    finally:
        node.stop()
        node.log.unlink(missing_ok=True)


# init code returning the runtime code PUSH1 0 PUSH1 0 REVERT: every call to the contract fails (status 0)
REVERTING_CONTRACT = "0x6460006000fd6000526005601bf3"


def deploy_reverting(node: Anvil, deployer: str) -> str:
    """Deploy from ``deployer``, and mine, a contract whose every call reverts; its address."""
    deployed = node.rpc("eth_sendTransaction", [{"from": deployer, "data": REVERTING_CONTRACT}])
    node.rpc("evm_mine")
    receipt = node.rpc("eth_getTransactionReceipt", [deployed])
    assert receipt["status"] == "0x1", receipt
    return str(receipt["contractAddress"])


def wallet_collector_yaml(node: Anvil, address: str, allow_to: str) -> str:
    """A config's collectors: the wallet collector every second, following ``address`` as the wallet ``bot``,
    which may send to ``allow_to``."""
    return f"""collectors:
  - wallet:
      interval: 1s
      endpoint: {{name: node, url: "{node.url}"}}
      addresses: [{{name: bot, address: "{address}"}}]
      allow_to: ["{allow_to}"]
"""
