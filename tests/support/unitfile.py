"""Reading a systemd unit file in tests: its settings by key."""

from __future__ import annotations

__all__ = ["unit_settings"]


def unit_settings(text: str) -> dict[str, list[str]]:
    """``key -> values`` of a systemd unit (every assignment of a repeated key, in order; sections merged)."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out
