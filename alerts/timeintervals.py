"""Time intervals in Alertmanager's ``time_intervals`` syntax, for escalation levels limited to a window.

The semantics are Alertmanager's (``timeinterval`` package): within one interval the fields are ANDed and an
absent field matches everything; the values of a field, and the intervals under one name, are ORed. Times are
``HH:MM`` with the start included and the end excluded (``24:00`` ends the day); weekday, day-of-month, month
and year ranges ``a:b`` include both ends; a negative day of month counts from the month's end (-1 is its last
day); the clock is read in ``location`` (an IANA zone, UTC when absent).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

__all__ = ["NamedTimeInterval", "TimeInterval", "TimeRange", "in_intervals"]

_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}  # monday = 0, as datetime.weekday
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_TIME_RE = re.compile(r"^(\d{2}):(\d{2})$")


def _minutes(text: str, what: str) -> int:
    m = _TIME_RE.match(text)
    if m is None:
        raise ValueError(f"{what} {text!r} is not HH:MM")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and mi != 0):
        raise ValueError(f"{what} {text!r} is not a time of day between 00:00 and 24:00")
    return h * 60 + mi


class TimeRange(BaseModel):
    """``start_time`` (included) to ``end_time`` (excluded), ``HH:MM`` in the interval's location."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_time: str = Field(description="HH:MM, included")
    end_time: str = Field(description="HH:MM, excluded; 24:00 is the end of the day")

    @field_validator("end_time")
    @classmethod
    def _order(cls, v: str, info: ValidationInfo) -> str:
        data = info.data
        end = _minutes(v, "end_time")
        if "start_time" in data and end <= _minutes(data["start_time"], "start_time"):
            raise ValueError(f"end_time {v!r} must be after start_time {data['start_time']!r}")
        return v

    @field_validator("start_time")
    @classmethod
    def _start(cls, v: str) -> str:
        if _minutes(v, "start_time") >= 24 * 60:
            raise ValueError(f"start_time {v!r} must be before 24:00")
        return v

    def span(self) -> tuple[int, int]:
        return _minutes(self.start_time, "start_time"), _minutes(self.end_time, "end_time")


def _range(text: str, what: str, parse: dict[str, int] | None, lo: int, hi: int) -> tuple[int, int]:
    """``a`` or ``a:b`` (inclusive), each a name in ``parse`` or a number in lo..hi."""

    def one(s: str) -> int:
        s = s.strip().lower()
        if parse is not None and s in parse:
            return parse[s]
        try:
            if hi < lo:
                raise ValueError  # names only (weekdays)
            n = int(s)
        except ValueError:
            names = f"a name ({', '.join(parse)})" if parse is not None else ""
            number = f"a number {lo}..{hi}" if hi >= lo else ""
            raise ValueError(f"{what} {text!r}: expected {' or '.join(x for x in (names, number) if x)}") from None
        if not lo <= n <= hi or (n == 0 and lo < 0):
            raise ValueError(f"{what} {text!r}: {n} is out of range {lo}..{hi}" + (" (0 is no day)" if lo < 0 else ""))
        return n

    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"{what} {text!r}: expected one value or a range a:b")
    begin, end = one(parts[0]), one(parts[-1])
    if (begin >= 0) == (end >= 0) and begin > end:
        raise ValueError(f"{what} {text!r}: the range starts after it ends")
    return begin, end


#: field -> (what an error calls a value, names, lowest, highest number; highest < lowest: names only)
_RANGES: dict[str, tuple[str, dict[str, int] | None, int, int]] = {
    "weekdays": ("weekday", _WEEKDAYS, 0, -1),
    "days_of_month": ("day of month", None, -31, 31),
    "months": ("month", _MONTHS, 1, 12),
    "years": ("year", None, 1, 9999),
}


class TimeInterval(BaseModel):
    """One window: every field given must match (an absent field matches always)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    times: list[TimeRange] | None = Field(
        None, description="times of day, e.g. {start_time: '09:00', end_time: '17:00'}")
    weekdays: list[str] | None = Field(None, description="e.g. ['monday:friday', 'sunday']")
    days_of_month: list[str] | None = Field(None, description="e.g. ['1:5', '-3:-1'] (negative: from the month's end)")
    months: list[str] | None = Field(None, description="e.g. ['january:march', '12'] (names or 1..12)")
    years: list[str] | None = Field(None, description="e.g. ['2026:2027']")
    location: str = Field("UTC", description="IANA time zone the clock is read in, e.g. Europe/London")

    _weekdays: tuple[tuple[int, int], ...] = PrivateAttr(default=())
    _days: tuple[tuple[int, int], ...] = PrivateAttr(default=())
    _months: tuple[tuple[int, int], ...] = PrivateAttr(default=())
    _years: tuple[tuple[int, int], ...] = PrivateAttr(default=())
    _zone: ZoneInfo = PrivateAttr()

    @field_validator("weekdays", "days_of_month", "months", "years")
    @classmethod
    def _check_ranges(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        for text in v or ():
            _range(text, *_RANGES[str(info.field_name)])
        return v

    @field_validator("location")
    @classmethod
    def _check_location(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"location {v!r} is not a known IANA time zone (e.g. UTC, Europe/London)") from None
        return v

    def model_post_init(self, context: object, /) -> None:
        self._weekdays = tuple(_range(s, *_RANGES["weekdays"]) for s in self.weekdays or ())
        self._days = tuple(_range(s, *_RANGES["days_of_month"]) for s in self.days_of_month or ())
        self._months = tuple(_range(s, *_RANGES["months"]) for s in self.months or ())
        self._years = tuple(_range(s, *_RANGES["years"]) for s in self.years or ())
        self._zone = ZoneInfo(self.location)

    def contains(self, when: float) -> bool:
        """Whether Unix time ``when`` falls in this window, read in its location."""
        t = datetime.fromtimestamp(when, self._zone)
        if self.times is not None:
            minute = t.hour * 60 + t.minute
            if not any(a <= minute < b for a, b in (r.span() for r in self.times)):
                return False
        if self.weekdays is not None and not any(a <= t.weekday() <= b for a, b in self._weekdays):
            return False
        if self.days_of_month is not None:
            month_days = calendar.monthrange(t.year, t.month)[1]
            for begin, end in self._days:
                b = month_days + begin + 1 if begin < 0 else begin
                e = month_days + end + 1 if end < 0 else end
                if b > month_days:
                    continue  # e.g. 31 in a 30-day month: no day of this month
                if b <= t.day <= min(e, month_days):
                    break
            else:
                return False
        if self.months is not None and not any(a <= t.month <= b for a, b in self._months):
            return False
        return self.years is None or any(a <= t.year <= b for a, b in self._years)


class NamedTimeInterval(BaseModel):
    """A name for one or more windows (ORed), referred to by ``active_time_intervals``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    time_intervals: list[TimeInterval] = Field(min_length=1, description="windows; any one of them is enough")


def in_intervals(intervals: list[TimeInterval] | tuple[TimeInterval, ...], when: float) -> bool:
    """Whether ``when`` falls in any of ``intervals``."""
    return any(i.contains(when) for i in intervals)
