"""JSON from outside the process (node answers, WebSocket frames, probed bodies), parsed with bounds.

Its size is bounded where it is read (``max_response_bytes``, ``max_body``); its nesting is bounded
here, before parsing: Python's parser recurses once per level (a RecursionError, not a ValueError,
past about 1000 levels), and so does anything that walks or prints the result.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JsonTooDeep", "json_too_deep", "loads_bounded"]

# Deepest nesting of arrays/objects accepted: every answer mevwatch asks for is under 10 levels.
MAX_JSON_DEPTH = 64

_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = [0] * 256  # +1 for an opening bracket, -1 for a closing one
for _c in b"[{":
    _NESTING[_c] = 1
for _c in b"]}":
    _NESTING[_c] = -1


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``raw`` nests arrays/objects deeper than ``limit``. Fewer brackets than the limit
    cannot be (the usual answer costs two counts); otherwise the brackets outside strings are summed
    up, all in C (about 60 ms for 1 MiB of brackets, the most an answer may hold)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0) > limit


class JsonTooDeep(ValueError):
    """The document nests arrays/objects deeper than MAX_JSON_DEPTH."""


def loads_bounded(raw: bytes | str) -> Any:
    """``json.loads`` that refuses, unparsed, a document nested deeper than MAX_JSON_DEPTH (JsonTooDeep)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if json_too_deep(data):
        raise JsonTooDeep(f"nests deeper than {MAX_JSON_DEPTH} levels ({len(data)} bytes): refused unparsed")
    try:
        return json.loads(data)
    except RecursionError:  # a belt: the parser's own limit depends on how deep the caller's stack is
        raise JsonTooDeep("nests too deep to parse") from None
