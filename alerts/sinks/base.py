"""What every sink implements, and how a delivery failure says whether to retry."""

from __future__ import annotations

from typing import Any, Protocol

from mevwatch.redaction import redact

__all__ = ["DeliveryError", "Sink"]


class DeliveryError(Exception):
    """A failed delivery. ``retry`` False means the receiver refused it for good (dead letter).

    The message goes to logs and the state DB: it is redacted here, whatever the sink put in it.
    ``retry_after`` is the receiver's own wait before the next try (HTTP Retry-After), in seconds."""

    def __init__(self, message: str, retry: bool = True, retry_after: float | None = None) -> None:
        self.message = redact(message)
        super().__init__(self.message)
        self.retry = retry
        self.retry_after = retry_after


class Sink(Protocol):
    """One configured destination; ``name`` is the ``sink`` label (receiver/kind/index)."""

    name: str
    kind: str
    receiver: str

    def wants(self, payload: dict[str, Any]) -> bool:
        """False for a resolved-only notification when send_resolved is off."""
        ...

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        """Deliver; return on acknowledgement, raise DeliveryError otherwise."""
        ...

    async def close(self) -> None: ...
