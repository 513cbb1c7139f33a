"""Label matchers: the four operators, quoting, anchored regexes and clear errors."""

from __future__ import annotations

import pytest

from mevwatch.alerts.matchers import parse_matcher


def test_matchers_parse_all_four_ops_and_anchor_regexes() -> None:
    m = parse_matcher('state=~"open|half_open"')
    assert (m.name, m.op, m.value) == ("state", "=~", "open|half_open")
    assert m.matches({"state": "open"})
    assert not m.matches({"state": "opened"})
    assert parse_matcher("node!=erigon").matches({"node": "geth"})
    assert parse_matcher('node="a\\"b"').value == 'a"b'
    assert parse_matcher('x!~"a.*"').matches({"x": "ba"})
    assert parse_matcher('missing=""').matches({})
    with pytest.raises(ValueError, match="invalid matcher"):
        parse_matcher("no operator")
    with pytest.raises(ValueError, match="bad regex"):
        parse_matcher('x=~"(unclosed"')
