"""Nesting of outside JSON is bounded before it is parsed, and brackets inside strings do not count."""

from __future__ import annotations

import json
import time

import pytest

from mevwatch.collectors._json import MAX_JSON_DEPTH, JsonTooDeep, json_too_deep, loads_bounded


def _nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def test_the_limit_is_exact() -> None:
    assert loads_bounded(_nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JsonTooDeep, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        loads_bounded(_nested(MAX_JSON_DEPTH + 1))
    mixed = b'{"a":' * 40 + b"[" * 40 + b"1" + b"]" * 40 + b"}" * 40
    assert json_too_deep(mixed)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"input": "[" * 5000, "esc": 'q\\"[[[' * 100, "list": [["x"]] * 1000}).encode()
    assert not json_too_deep(text)
    assert loads_bounded(text)["input"] == "[" * 5000


def test_what_python_cannot_parse_is_refused_not_raised() -> None:
    for doc in (_nested(200_000), "[" * 3000, '{"a":' * 100_000):  # deep, unbalanced, objects
        with pytest.raises(JsonTooDeep):
            loads_bounded(doc)
    with pytest.raises(ValueError, match="Expecting"):  # not JSON stays an ordinary ValueError
        loads_bounded(b"[1,")


def test_the_largest_answer_is_checked_quickly() -> None:
    worst = _nested(512 * 1024)  # 1 MiB of brackets: the most an answer may hold (max_response_bytes)
    t0 = time.perf_counter()
    assert json_too_deep(worst)
    assert time.perf_counter() - t0 < 1.0  # about 70 ms on one core; a bound, not a timing
