"""Notification identity: group keys as Alertmanager writes them, incident ids, notification ids.

Every sink takes its ids from here, so an incident has one identity whichever path it took:
``group_key`` is Alertmanager's ``<route key>:<group labels>`` (dispatch/dispatch.go ``GroupKey``,
dispatch/route.go ``Key``), ``incident_id`` is its ``notify.Key.Hash()`` (the sha256 that
Alertmanager's PagerDuty integration sends as ``dedup_key``). The host is always a group label,
so two hosts never share a key; nothing in a key depends on time, so a restart keeps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from mevwatch.alerts.matchers import Matcher

__all__ = [
    "DETAIL_ANNOTATIONS", "HOST_LABEL", "group_key", "group_labels", "incident_id", "notification_id", "route_key",
]

#: the label naming the host an alert is about; always part of a notification's identity
HOST_LABEL = "host"
#: annotations that carry a detail of what happened (a changed file's diff), many lines long: shown on a block
#: or line of their own on the landing page and in diagnose
DETAIL_ANNOTATIONS = ("diff",)


def _go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (``%q``) for the printable strings label values are."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _matcher_string(m: Matcher) -> str:
    # pkg/labels Matcher.String(): name, op, value escaped as in OpenMetrics
    value = m.value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'{m.name}{m.op}"{value}"'


_OP_ORDER = {"=": 0, "!=": 1, "=~": 2, "!~": 3}  # pkg/labels MatchType order, the last sort key


def route_key(matchers: Iterable[Matcher] | None) -> str:
    """The key of a route: ``{}`` for the top-level route, ``{}/{a="b",c=~"d"}`` for a child of it.

    mevwatch's routes are the top-level route's children, as in an Alertmanager config written from them.
    """
    if matchers is None:
        return "{}"
    ordered = sorted(matchers, key=lambda m: (m.name, m.value, _OP_ORDER[m.op]))
    return "{}/{" + ",".join(_matcher_string(m) for m in ordered) + "}"


def group_labels(labels: Mapping[str, str], group_by: Iterable[str]) -> dict[str, str]:
    """The labels an alert is grouped by: those of ``group_by`` it has, and always the host."""
    names = {*group_by, HOST_LABEL}
    return {k: v for k, v in labels.items() if k in names}


def group_key(route: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's group key: route key, ``:``, the group labels as ``model.LabelSet.String()``."""
    body = ", ".join(f"{k}={_go_quote(labels[k])}" for k in sorted(labels))
    return f"{route}:{{{body}}}"


def incident_id(key: str) -> str:
    """One id per incident (group), the same across restarts: Alertmanager's ``Key.Hash()`` of the group key."""
    return hashlib.sha256(key.encode()).hexdigest()


def notification_id(key: str, receiver: str, level: int, seq: int, sink: str) -> str:
    """One id per notification sent to one sink; the outbox stores an id once, so a re-flush is not re-sent."""
    return hashlib.sha256(f"{key}|{receiver}|{level}|{seq}|{sink}".encode()).hexdigest()[:32]
