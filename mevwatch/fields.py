"""Config field types shared by every section: durations, byte sizes, secrets read from files, sink URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from mevwatch.redaction import redact_sink_url, register_sink_url

__all__ = [
    "ByteSize",
    "Duration",
    "SinkURL",
    "check_sink_url",
    "parse_bytes",
    "parse_duration",
    "read_secret_file",
    "secret_url",
]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any) -> float:
    """``15s``, ``1m30s``, ``500ms``, ``2h`` or a number of seconds -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '15s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_RE.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise ValueError(
                    f"invalid duration {value!r}: use e.g. '500ms', '15s', '1m30s', '2h'"
                ) from None
    else:
        raise ValueError("a duration must be a number of seconds or a string like '15s'")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}


def parse_bytes(value: Any) -> int:
    """``64MiB``, ``1GB``, ``512k`` or a number -> bytes (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '64MiB'")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str):
        m = _BYTES_RE.match(value)
        if not m:
            raise ValueError(f"invalid size {value!r}: use e.g. '64MiB', '1GB', '4096'")
        unit = (m.group(2) or "").lower()
        if unit.endswith("ib") or (len(unit) == 2 and unit[1] == "i"):
            mult = 1024 ** ("kmgtp".index(unit[0]) + 1)
        else:
            mult = _BYTE_UNITS[unit.rstrip("b") if unit != "b" else "b"]
        n = int(float(m.group(1)) * mult)
    else:
        raise ValueError("a size must be a number of bytes or a string like '64MiB'")
    if n < 0:
        raise ValueError(f"size must not be negative: {value!r}")
    return n


def read_secret_file(path: str | Path) -> str:
    """Content of a ``*_file`` secret, without the trailing newline; clear error when unreadable."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {str(p)!r} is not UTF-8 text") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


_HTTP_URL = re.compile(r"https?://[^/\s?#]+(?:[/?#]\S*)?")


def check_sink_url(text: str, where: str = "url") -> str:
    """``text`` stripped, when it is an http(s) URL, registered as a secret (mevwatch.redaction) so no
    output shows more of it than scheme, host and port; ValueError (never quoting its path) if not."""
    text = text.strip()
    if not _HTTP_URL.fullmatch(text):
        raise ValueError(f"{where} must be http(s)://host[:port]/path, got {redact_sink_url(text)!r}")
    register_sink_url(text)
    return text


def secret_url(url: str | None, url_file: Path | str | None, name: str = "url") -> str:
    """The URL of a sink given inline (``name``) or in a file (``<name>_file``), checked and registered.
    ValueError when neither or both are set, the file is unreadable, or it does not hold an http(s) URL."""
    if (url is None) == (url_file is None):
        raise ValueError(f"set exactly one of {name} and {name}_file")
    if url_file is not None:
        return check_sink_url(read_secret_file(url_file), f"{name}_file {str(url_file)!r}")
    assert url is not None
    return check_sink_url(url, name)


class SinkURL(BaseModel):
    """A sink's ``url`` or ``url_file`` (Alertmanager's names): a chat webhook URL is its own credential.

    ``target_url`` is the URL to call; everything shown (logs, errors, the state DB, check-config)
    goes through mevwatch.redaction, which masks its path and query.
    """

    url: str | None = Field(None, repr=False, description="target URL (its path and query are never shown)")
    url_file: Path | None = Field(None, description="file holding the target URL instead of url")
    _target_url: str = PrivateAttr("")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else check_sink_url(v)

    @field_validator("url_file")
    @classmethod
    def _check_url_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            check_sink_url(read_secret_file(v), f"url_file {str(v)!r}")
        return v

    @model_validator(mode="after")
    def _resolve_url(self) -> SinkURL:
        self._target_url = secret_url(self.url, self.url_file)
        return self

    @property
    def target_url(self) -> str:
        return self._target_url

    @property
    def shown_url(self) -> str:
        return redact_sink_url(self._target_url)
