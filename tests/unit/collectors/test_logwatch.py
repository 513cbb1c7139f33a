"""logwatch: built-in patterns on fixture lines, options, and following real files through every fault."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector as RegistryCollector

from mevwatch.collectors._dirwatch import DirWatch
from mevwatch.collectors._journal import JournalFollower, journal_available, parse_journal_entry
from mevwatch.collectors._logmatch import (
    BUILTIN_PATTERNS,
    LinePattern,
    compile_user_regex,
    limit_line_length,
    parse_nginx_combined,
)
from mevwatch.collectors._logtail import FileSource, LogTailer, SourceStats
from mevwatch.collectors.base import CollectorContext, Families, Paths
from mevwatch.collectors.logwatch import LogwatchCollector, LogwatchOptions, build_sources
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.state import StateDB
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import REPO, need_root

FIXTURES = REPO / "tests" / "fixtures" / "logwatch"
BUILTIN = {p.name: p for p in BUILTIN_PATTERNS}
MEV_PATTERNS = (BUILTIN["error"], BUILTIN["warning"])


# --- patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_pattern_counts_every_positive_fixture_line(name: str) -> None:
    lines = (FIXTURES / f"{name}.match").read_bytes().splitlines(keepends=True)
    assert lines
    for line in lines:
        assert BUILTIN[name].count(line) == 1, line
    assert BUILTIN[name].count(b"".join(lines)) == len(lines)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_pattern_ignores_every_negative_fixture_line(name: str) -> None:
    text = (FIXTURES / f"{name}.nomatch").read_bytes()
    assert text.count(b"\n") >= 2
    assert BUILTIN[name].count(text) == 0
    mixed = (FIXTURES / f"{name}.match").read_bytes() + text
    assert BUILTIN[name].count(mixed) == (FIXTURES / f"{name}.match").read_bytes().count(b"\n")


def test_nginx_combined_fields_are_parsed_by_position() -> None:
    line = (
        b'10.0.0.5 - alice [25/Nov/2026:10:02:02 +0000] "POST /api/v2/execute?id=403 HTTP/2.0" 401 0 '
        b'"https://mev.example/\\x22 403 x" "Mozilla/5.0 (X11; Linux x86_64)"'
    )
    rec = parse_nginx_combined(line)
    assert rec is not None
    assert rec.remote_addr == b"10.0.0.5"
    assert rec.remote_user == b"alice"
    assert rec.request == b"POST /api/v2/execute?id=403 HTTP/2.0"
    assert rec.status == 401
    assert rec.body_bytes_sent == 0
    assert rec.referer == b"https://mev.example/\\x22 403 x"
    assert rec.user_agent == b"Mozilla/5.0 (X11; Linux x86_64)"
    no_size = parse_nginx_combined(b'::1 - - [25/Nov/2026:10:02:03 +0000] "-" 400 - "-" "-"')
    assert no_size is not None
    assert (no_size.status, no_size.body_bytes_sent) == (400, 0)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"2026/11/25 10:02:08 [error] 1234#1234: *5 open() failed",
        b'10.0.0.5 - - [25/Nov/2026:10:02:02 +0000] "GET / HTTP/1.1" 2000 1 "-" "-"',
        b'10.0.0.5 - - [25/Nov/2026:10:02:02 +0000] "GET / HTTP/1.1" 200 1 "-"',
        b'10.0.0.5 - - 25/Nov/2026:10:02:02 "GET / HTTP/1.1" 200 1 "-" "-"',
    ],
)
def test_nginx_lines_not_in_combined_format_are_rejected(line: bytes) -> None:
    assert parse_nginx_combined(line) is None


def test_a_line_matching_twice_counts_once() -> None:
    assert BUILTIN["error"].count(b"ERROR one ERROR two\nok\nERROR\n") == 2


def test_user_regex_never_counts_across_two_lines() -> None:
    p = LinePattern("x", compile_user_regex(r"ERROR\s+foo"))
    assert p.count(b"ERROR\nfoo\n") == 0
    assert p.count(b"ERROR \t foo\nERROR\nfoo bar\nxx ERROR foo\n") == 2
    anchored = LinePattern("a", compile_user_regex(r"^panic:"))
    assert anchored.count(b"panic: a\nno panic: b\npanic: c\n") == 2
    assert LinePattern("i", compile_user_regex("reverted", ignore_case=True)).count(b"REVERTED\nx\n") == 1


def test_user_regex_matches_raw_bytes_of_non_utf8_lines() -> None:
    p = LinePattern("x", compile_user_regex("gas too low"))
    assert p.count(b"\xff\xfe gas too low \xc3\x28\nok\n") == 1
    assert LinePattern("u", compile_user_regex("prix élevé")).count("prix élevé\n".encode()) == 1


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("foo(bar", "missing ), unterminated subpattern at position 3"),
        ("", "must not be empty"),
        ("x*", "matches the empty line"),
        ("[z-a]", "bad character range"),
    ],
)
def test_bad_user_regex_is_rejected_with_the_reason(regex: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_user_regex(regex)


def test_line_length_limit_cuts_and_counts_only_long_lines() -> None:
    normal = b"a" * 100 + b"\n" + b"b" * 400 + b"\n"
    near = b"c" * 1000 + b"\n"  # under the limit, but long enough to take the exact path
    assert limit_line_length(near, 1024) == (near, 0)
    out, cut = limit_line_length(normal, 1024)
    assert (out, cut) == (normal, 0)
    assert out is normal  # the usual case costs no copy
    long = b"x" * 3000 + b"ERROR\n" + b"short\n" + b"y" * 1025 + b"\n"
    out, cut = limit_line_length(long, 1024)
    assert cut == 2
    assert out == b"x" * 1024 + b"\nshort\n" + b"y" * 1024 + b"\n"
    exact = b"z" * 1024 + b"\n"
    assert limit_line_length(exact * 5, 1024) == (exact * 5, 0)


# --- options -----------------------------------------------------------------------------


def _config_error(body: str) -> str:
    text = "collectors:\n  - logwatch:\n" + textwrap.indent(textwrap.dedent(body), "      ")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "mw.yaml")
    return str(info.value)


def test_bad_regex_is_a_config_error_with_field_path_and_line() -> None:
    err = _config_error(
        """\
        patterns:
          - {name: fine, regex: 'ok', sources: [mev]}
          - name: broken
            regex: 'foo(bar'
            sources: [mev]
        """
    )
    assert "mw.yaml:6: collectors[0].logwatch.patterns[1].regex: invalid regex 'foo(bar'" in err


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("patterns: [{name: p, regex: x, sources: [nosuch]}]\n", "patterns[0].sources: unknown source 'nosuch'"),
        ("patterns: [{name: p, regex: x}]\n", "needs `sources` or `files`"),
        ("patterns: [{name: error, regex: x, sources: [mev]}]\n", "name 'error' is already used"),
        ("patterns: [{name: 'a b', regex: x, sources: [mev]}]\n", "pattern name must be 1-64 characters"),
        ("patterns: [{name: p, regex: x, files: [relative.log]}]\n", "paths must be absolute"),
        ("sources: [{name: a, paths: [var/log/a.log]}]\n", "paths must be absolute"),
        ("sources: [{name: a, paths: []}]\n", "at least one path"),
        ("sources: [{name: a, paths: [/a]}, {name: a, paths: [/b]}]\n", "duplicate source name(s): a"),
        ("sources: [{name: journal, paths: [/a]}]\n", "reserved for the journal"),
        ("builtin_patterns: [error, sshd_brute]\n", "unknown built-in pattern(s) sshd_brute"),
        ("max_line_length: 10\n", "between 256 bytes and 16MiB"),
        ("start_at: middle\n", "collectors[0].logwatch.start_at"),
        ("journal: {enable: true}\n", "collectors[0].logwatch.journal.enable: unknown key"),
    ],
)
def test_bad_options_are_config_errors(body: str, expected: str) -> None:
    assert expected in _config_error(body)


def test_example_config_validates() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mevwatch", "check-config", str(REPO / "config.example.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_user_patterns_join_their_sources_and_files_become_sources() -> None:
    opts = LogwatchOptions.model_validate(
        {
            "patterns": [
                {"name": "reverted", "regex": "execution reverted", "sources": ["mev", "journal"]},
                {"name": "strategy_failed", "regex": "Execution failed", "files": ["/var/log/mev/strategy_*.log"]},
            ]
        }
    )
    sources, journal = build_sources(opts)
    by_name = {s.name: s for s in sources}
    assert [p.name for p in by_name["mev"].patterns] == ["error", "warning", "no_space_left", "reverted"]
    assert [p.name for p in by_name["auth"].patterns] == ["sshd_failed_password", "sshd_invalid_user"]
    assert by_name["/var/log/mev/strategy_*.log"].globs == ("/var/log/mev/strategy_*.log",)
    assert [p.name for p in journal] == ["error", "warning", "no_space_left", "oom_killed_process", "reverted"]


def test_a_source_of_any_name_can_say_which_built_in_patterns_it_counts() -> None:
    opts = LogwatchOptions.model_validate({"sources": [
        {"name": "engine", "paths": ["/opt/engine/*.log"], "patterns": ["error", "no_space_left"]},
        {"name": "mev", "paths": ["/var/log/mev/*.log"], "patterns": []},
        {"name": "syslog", "paths": ["/var/log/syslog"]},
    ]})
    by_name = {s.name: s for s in build_sources(opts)[0]}
    assert [p.name for p in by_name["engine"].patterns] == ["error", "no_space_left"]  # not named 'mev', counted
    assert by_name["mev"].patterns == ()  # an empty list turns the defaults off
    assert [p.name for p in by_name["syslog"].patterns] == ["no_space_left", "oom_killed_process"]
    with pytest.raises(ConfigError, match=r"sources\[0\]\.patterns: .*unknown built-in pattern\(s\) eror"):
        load_config_text("collectors:\n  - logwatch:\n      sources: [{name: x, paths: [/x], patterns: [eror]}]\n",
                         "<t>")


# --- following files ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tailer(globs: list[str], state: StateDB | None = None, **kw: object) -> LogTailer:
    kw.setdefault("start_at", "beginning")
    kw.setdefault("rotate_wait", 0.0)
    return LogTailer([FileSource("mev", tuple(globs), MEV_PATTERNS)], state=state, **kw)  # type: ignore[arg-type]


def poll(t: LogTailer) -> SourceStats:
    result = t.poll()
    assert result is not None
    return result[1]["mev"]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


def test_start_at_end_skips_history_but_new_files_are_read_whole(logdir: Path) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"ERROR old\nERROR old\n")
    t = make_tailer([str(logdir / "*.log")], start_at="end")
    st = poll(t)
    assert (st.lines, st.matches["error"], st.status, st.files) == (0, 0, "ok", 1)
    append(app, b"ERROR new\nWARN new\n")
    (logdir / "late.log").write_bytes(b"ERROR in a file that appeared later\n")
    st = poll(t)
    assert (st.lines, st.matches["error"], st.matches["warning"], st.files) == (3, 2, 1, 2)
    t.close()


def test_partial_line_waits_for_its_newline(logdir: Path) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"ERROR complete\nERR")
    t = make_tailer([str(app)])
    assert (poll(t).lines, poll(t).matches["error"]) == (1, 1)
    append(app, b"OR finished later\n")
    st = poll(t)
    assert (st.lines, st.matches["error"]) == (2, 2)
    t.close()


def test_rename_rotation_drains_the_old_file_and_reads_the_new_one(logdir: Path) -> None:
    clock = FakeClock()
    app = logdir / "app.log"
    app.write_bytes(b"ERROR 1\n")
    t = make_tailer([str(app)], rotate_wait=5.0, clock=clock)
    assert poll(t).matches["error"] == 1
    with open(app, "ab") as old:  # a writer that has not reopened yet
        app.rename(logdir / "app.log.1")
        app.write_bytes(b"ERROR 3 in the new file\n")
        old.write(b"ERROR 2 written to the renamed file\n")
        old.flush()
        st = poll(t)
        assert (st.matches["error"], st.rotations["rename"]) == (3, 1)
        old.write(b"ERROR 4 late write before the writer reopens\n")
    clock.now += 1
    assert poll(t).matches["error"] == 4
    clock.now += 10
    st = poll(t)
    assert (st.matches["error"], st.lines, st.files) == (4, 4, 1)
    assert len(t._followed) == 1  # the idle rotated file was closed
    t.close()


def test_copytruncate_reads_the_rest_from_the_copy(logdir: Path) -> None:
    app = logdir / "access.log"
    app.write_bytes(b"ERROR 1\nERROR 2\n")
    t = make_tailer([str(app)])
    assert poll(t).matches["error"] == 2
    append(app, b"ERROR 3 written after our last read\nWARN 4\n")
    shutil.copyfile(app, logdir / "access.log.1")
    with open(app, "r+b") as f:
        f.truncate(0)
    append(app, b"ERROR 5 after the truncate, longer than what was there before it\n")
    st = poll(t)
    assert (st.matches["error"], st.matches["warning"], st.lines) == (4, 1, 5)
    assert st.rotations["truncate"] == 1
    append(app, b"ERROR 6\n")
    assert poll(t).matches["error"] == 5
    t.close()


def test_truncation_in_place_restarts_at_zero(logdir: Path) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"INFO a\nINFO b\nINFO c\n")
    t = make_tailer([str(app)])
    assert poll(t).lines == 3
    app.write_bytes(b"ERROR x\n")  # `> app.log`: same inode, shorter
    st = poll(t)
    assert (st.lines, st.matches["error"], st.rotations["truncate"]) == (4, 1, 1)
    t.close()


def test_restart_on_the_same_state_db_neither_recounts_nor_misses(logdir: Path, state_db: StateDB) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"ERROR before the first start\n")
    a = make_tailer([str(app)], state=state_db, start_at="end")
    assert poll(a).lines == 0
    append(app, b"ERROR 1\nERROR 2\npartial ERR")
    assert poll(a).matches["error"] == 2
    a.close()
    append(app, b"OR 3 completed while stopped\nERROR 4 written while stopped\n")
    b = make_tailer([str(app)], state=state_db, start_at="end")
    st = poll(b)
    assert (st.lines, st.matches["error"]) == (2, 2)
    b.close()


def test_rotation_while_stopped_drains_the_rotated_file(logdir: Path, state_db: StateDB) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"ERROR 1\n")
    a = make_tailer([str(app)], state=state_db)
    assert poll(a).matches["error"] == 1
    a.close()
    append(app, b"ERROR 2 after the stop\n")
    app.rename(logdir / "app.log.1")
    app.write_bytes(b"ERROR 3 new file\nWARN 4\n")
    b = make_tailer([str(app)], state=state_db)
    st = poll(b)
    assert (st.matches["error"], st.matches["warning"], st.lines) == (2, 1, 3)
    b.close()


def test_copytruncate_while_stopped_reads_the_rest_from_the_copy(logdir: Path, state_db: StateDB) -> None:
    app = logdir / "access.log"
    app.write_bytes(b"ERROR 1\npartial")
    a = make_tailer([str(app)], state=state_db)
    assert poll(a).matches["error"] == 1
    a.close()
    append(app, b" ERROR 2 completed while stopped\nERROR 3\n")
    shutil.copyfile(app, logdir / "access.log-20261125")
    with open(app, "r+b") as f:
        f.truncate(0)
    append(app, b"WARN 4 in the truncated file, longer than the old offset was\n")
    b = make_tailer([str(app)], state=state_db)
    st = poll(b)
    assert (st.matches["error"], st.matches["warning"], st.lines, st.rotations["truncate"]) == (2, 1, 3, 1)
    b.close()


def test_state_of_an_unrelated_file_with_a_reused_inode_is_ignored(logdir: Path, state_db: StateDB) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"INFO " + b"x" * 200 + b"\n")
    a = make_tailer([str(app)], state=state_db)
    poll(a)
    a.close()
    st = os.stat(app)
    state_db.execute("UPDATE logwatch_files SET head = ? WHERE ino = ?", (b"something else entirely", st.st_ino))
    b = make_tailer([str(app)], state=state_db)
    assert poll(b).lines == 1  # read from 0: the stored offset belonged to another file
    b.close()


def test_huge_line_is_cut_counted_and_memory_stays_bounded(logdir: Path) -> None:
    app = logdir / "app.log"
    limit = 4096
    t = make_tailer([str(app)], max_line=limit)
    app.write_bytes(b"ERROR at the start " + b"x" * 10_000)
    st = poll(t)
    assert (st.lines, st.truncated, st.matches["error"]) == (1, 1, 1)
    append(app, b"y" * 50_000 + b" WARN beyond the limit, not matched\nWARN next line\n")
    st = poll(t)
    assert (st.lines, st.truncated, st.matches["warning"]) == (2, 1, 1)
    assert all(len(f.carry) <= limit for f in t._followed.values())
    append(app, b"z" * 9000 + b"ERROR past the cut\nshort\n")
    st = poll(t)
    assert (st.lines, st.truncated, st.matches["error"]) == (4, 2, 1)
    t.close()


def test_binary_junk_and_invalid_utf8_are_counted_not_fatal(logdir: Path) -> None:
    app = logdir / "app.log"
    rng = random.Random(4)
    junk = bytes(rng.randrange(256) for _ in range(200_000))
    app.write_bytes(junk + b"\n\xff\xfeERROR \xc3\x28 invalid utf-8\n\x00\x00WARN\x00\n")
    t = make_tailer([str(app)])
    st = poll(t)
    assert st.lines == junk.count(b"\n") + 3
    assert st.matches["error"] >= 1
    assert st.matches["warning"] >= 1
    assert st.status == "ok"
    t.close()


def test_directory_where_a_file_is_expected_is_unreadable_once(logdir: Path) -> None:
    (logdir / "app.log").mkdir()
    (logdir / "ok.log").write_bytes(b"ERROR\n")
    t = make_tailer([str(logdir / "*.log")])
    st = poll(t)
    assert (st.status, st.read_errors, st.files, st.matches["error"]) == ("unreadable", 1, 1, 1)
    assert "not a regular file" in st.reason
    st = poll(t)
    assert st.read_errors == 1  # one episode, not one per pass
    (logdir / "app.log").rmdir()
    assert poll(t).status == "ok"
    t.close()


def test_missing_source_reports_missing(logdir: Path) -> None:
    t = make_tailer([str(logdir / "nothing-*.log")])
    st = poll(t)
    assert (st.status, st.files, st.lines) == ("missing", 0, 0)
    assert "no file matches" in st.reason
    t.close()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (pytest's tmp root is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mevwatch-logwatch-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _status_as_nobody(path: Path) -> tuple[str, str, int]:
    code = textwrap.dedent(
        f"""
        import json, os
        from mevwatch.collectors._logtail import FileSource, LogTailer
        os.setgid(65534); os.setuid(65534)  # after the imports: the interpreter may live under /root
        t = LogTailer([FileSource("auth", ({str(path)!r},), ())], start_at="beginning")
        st = t.poll()[1]["auth"]
        print(json.dumps([st.status, st.reason, st.read_errors]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    status, reason, errors = json.loads(out.stdout.strip().splitlines()[-1])
    return str(status), str(reason), int(errors)


def test_file_unreadable_for_an_unprivileged_reader(public_dir: Path) -> None:
    need_root()
    secret = public_dir / "auth.log"
    secret.write_bytes(b"Nov 25 10:00:01 h sshd[1]: Failed password for root from 1.2.3.4 port 1 ssh2\n")
    secret.chmod(0o600)
    status, reason, errors = _status_as_nobody(secret)
    assert (status, errors) == ("unreadable", 1)
    assert "Permission denied" in reason
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    (private / "auth.log").write_bytes(b"x\n")
    status, reason, errors = _status_as_nobody(private / "auth.log")
    assert (status, errors) == ("unreadable", 1)
    assert "Permission denied" in reason


def test_file_deleted_while_followed_is_drained_then_closed(logdir: Path) -> None:
    clock = FakeClock()
    app = logdir / "app.log"
    app.write_bytes(b"ERROR 1\n")
    t = make_tailer([str(app)], rotate_wait=2.0, clock=clock)
    assert poll(t).matches["error"] == 1
    with open(app, "ab") as w:
        app.unlink()
        w.write(b"ERROR 2 written after the unlink\n")
    st = poll(t)
    assert (st.matches["error"], st.status, st.rotations["rename"]) == (2, "missing", 1)
    fd = next(iter(t._followed.values())).fd
    clock.now += 3
    poll(t)
    assert t._followed == {}
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        target = ""
    assert "app.log" not in target  # the deleted file's descriptor was closed
    t.close()


def test_compressed_rotations_are_never_followed(logdir: Path) -> None:
    (logdir / "app.log").write_bytes(b"ERROR\n")
    (logdir / "app.log.2.gz").write_bytes(b"\x1f\x8b ERROR\n")
    t = make_tailer([str(logdir / "app.log*")])
    st = poll(t)
    assert (st.files, st.matches["error"]) == (1, 1)
    t.close()


def test_backlog_is_read_in_budgeted_passes(logdir: Path) -> None:
    app = logdir / "app.log"
    app.write_bytes(b"ERROR line\n" * 100_000)  # 1.1 MB
    t = make_tailer([str(app)], max_bytes_per_pass=1 << 18)
    result = t.poll()
    assert result is not None
    more, stats = result
    assert more
    assert 0 < stats["mev"].lines < 100_000
    passes = 1
    while more:
        result = t.poll()
        assert result is not None
        more, stats = result
        passes += 1
    assert stats["mev"].lines == stats["mev"].matches["error"] == 100_000
    assert passes >= 4
    t.close()


# --- journal -----------------------------------------------------------------------------


def test_journal_entries_are_parsed_from_json() -> None:
    assert parse_journal_entry(b'{"__CURSOR":"s=1;i=2","MESSAGE":"ERROR a\\nb"}') == ("s=1;i=2", b"ERROR a b")
    assert parse_journal_entry(b'{"__CURSOR":"c","MESSAGE":[255,69,82,82,79,82]}') == ("c", b"\xffERROR")
    assert parse_journal_entry(b'{"__CURSOR":"c","MESSAGE":null}') == ("c", b"")
    assert parse_journal_entry(b'{"MESSAGE":"no cursor"}') is None
    assert parse_journal_entry(b"not json") is None
    assert parse_journal_entry(b"[1,2]") is None


def test_journal_counts_entries_by_priority_as_journalctl_p_err_does(state_db: StateDB) -> None:
    f = JournalFollower([], state=state_db, journalctl="journalctl", rootfs=Path("/"))
    for cursor, prio, msg in (("a", "3", "disk failure"), ("b", "2", "crit"), ("c", "4", "ERROR in a warning"),
                              ("d", "6", "info"), ("e", None, "no priority")):
        entry = {"__CURSOR": cursor, "MESSAGE": msg, **({"PRIORITY": prio} if prio else {})}
        f.feed(json.dumps(entry).encode())
    assert f.stats.matches["priority_err"] == 2  # err and crit, whatever the words say
    assert f.stats.lines == 5


def test_journal_is_missing_on_a_host_without_journald(tmp_path: Path) -> None:
    exe, why = journal_available("journalctl", tmp_path)
    assert exe is None
    assert "journald is not running" in why or "not found" in why
    exe, why = journal_available("/nonexistent/journalctl", Path("/"))
    assert (exe, why) == (None, "/nonexistent/journalctl not found")


FAKE_JOURNALCTL = """#!/bin/sh
echo "$@" >> "{args}"
printf '%s\\n' '{{"__CURSOR":"c1","MESSAGE":"mev-detection: ERROR rpc timeout"}}'
printf '%s\\n' '{{"__CURSOR":"c2","MESSAGE":"Out of memory: Killed process 42 (erigon)"}}'
printf '%s\\n' 'garbage line'
printf '%s\\n' '{{"__CURSOR":"c3","MESSAGE":[87,65,82,78,255]}}'
echo "journal rotated under us" >&2
exit 1
"""


async def test_journal_follower_counts_and_resumes_after_the_saved_cursor(tmp_path: Path, state_db: StateDB) -> None:
    (tmp_path / "run/systemd/journal").mkdir(parents=True)
    (tmp_path / "run/systemd/journal/socket").touch()
    args = tmp_path / "args.txt"
    exe = tmp_path / "journalctl"
    exe.write_text(FAKE_JOURNALCTL.format(args=args))
    exe.chmod(0o755)
    patterns = [p for p in BUILTIN_PATTERNS if "journal" in p.sources]
    first = JournalFollower(patterns, state=state_db, journalctl=str(exe), rootfs=tmp_path, units=["mev-detection"])
    await first._follow(str(exe))
    st = first.stats
    assert (st.lines, st.matches["error"], st.matches["oom_killed_process"], st.matches["warning"]) == (3, 1, 1, 1)
    assert st.status == "unreadable"
    assert "journalctl exited with 1: journal rotated under us" in st.reason
    second = JournalFollower(patterns, state=state_db, journalctl=str(exe), rootfs=tmp_path)
    assert second.cursor == "c3"
    await second._follow(str(exe))
    calls = args.read_text().splitlines()
    assert calls[0] == "--follow --output=json --no-pager --lines=0 --unit=mev-detection"
    assert calls[1] == "--follow --output=json --no-pager --after-cursor=c3 --no-tail"


# --- the collector -----------------------------------------------------------------------


def _exposition(families: list[object]) -> str:
    class Fixed(RegistryCollector):
        def collect(self) -> Iterator[object]:  # type: ignore[override]
            return iter(families)

    reg = CollectorRegistry()
    reg.register(Fixed())
    return generate_latest(reg).decode()


async def test_collector_emits_every_source_and_status(tmp_path: Path, state_db: StateDB) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "auth.log").write_bytes(b"")
    opts = LogwatchOptions.model_validate(
        {
            "sources": [{"name": "auth", "paths": [str(logs / "auth.log")]},
                        {"name": "mev", "paths": [str(logs / "mev" / "*.log")]}],
            "start_at": "beginning",
            "journal": {"journalctl": "/nonexistent/journalctl"},
            "patterns": [{"name": "reverted", "regex": "execution reverted", "files": [str(logs / "x.log")]}],
        }
    )
    ctx = CollectorContext(kind="logwatch", instance="t", interval=0.05, timeout=5.0, state=state_db)
    collector = LogwatchCollector(ctx, opts)
    emitted: list[list[object]] = []
    task = asyncio.create_task(collector.run(lambda fams: emitted.append(list(fams))))
    try:
        await asyncio.sleep(0.2)
        append(logs / "auth.log", (FIXTURES / "sshd_failed_password.match").read_bytes())
        (logs / "x.log").write_bytes(b"tx 0xab: execution reverted\n")
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()
    text = _exposition(emitted[-1])
    assert sample_value(text, "mevwatch_log_matches_total", source="auth", pattern="sshd_failed_password") == 4
    assert sample_value(text, "mevwatch_log_matches_total", source="auth", pattern="sshd_invalid_user") == 0
    assert sample_value(text, "mevwatch_log_matches_total", source=str(logs / "x.log"), pattern="reverted") == 1
    assert sample_value(text, "mevwatch_log_lines_read_total", source="auth") == 4
    assert sample_value(text, "mevwatch_log_source_status", source="auth", status="ok") == 1
    assert sample_value(text, "mevwatch_log_source_status", source="mev", status="missing") == 1
    assert sample_value(text, "mevwatch_log_source_status", source="mev", status="ok") == 0
    assert sample_value(text, "mevwatch_log_source_status", source="journal", status="missing") == 1
    assert sample_value(text, "mevwatch_log_rotations_total", source="auth", mode="truncate") == 0
    assert sample_value(text, "mevwatch_log_lines_truncated_total", source="auth") == 0


def test_daemon_serves_log_matches(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    access = logs / "access.log"
    access.write_bytes(b"")
    config = textwrap.dedent(
        f"""\
        collectors:
          - logwatch:
              interval: 200ms
              sources: [{{name: nginx_access, paths: ["{access}"]}}]
              journal: {{enabled: false}}
        """
    )
    with RunningDaemon(tmp_path, config) as daemon:
        daemon.wait_for("mevwatch_log_source_status", source="nginx_access", status="ok")
        append(access, (FIXTURES / "nginx_status_401.match").read_bytes())
        append(access, (FIXTURES / "nginx_status_401.nomatch").read_bytes())
        for _ in range(50):
            if sample_value(daemon.get(), "mevwatch_log_lines_read_total", source="nginx_access") == 8:
                break
            time.sleep(0.1)
        text = daemon.get()
    assert sample_value(text, "mevwatch_log_matches_total", source="nginx_access", pattern="nginx_status_401") == 3
    assert sample_value(text, "mevwatch_log_matches_total", source="nginx_access", pattern="nginx_status_403") == 0
    assert sample_value(text, "mevwatch_log_lines_read_total", source="nginx_access") == 8


def _live_expectations(opts: LogwatchOptions) -> dict[str, str]:
    want = {
        src.name: "ok" if any(Path(p).is_file() for g in src.paths for p in glob.glob(g)) else "missing"
        for src in opts.sources
    }
    journald = Path("/run/systemd/journal/socket").exists() and shutil.which("journalctl") is not None
    want["journal"] = "ok" if journald else "missing"
    return want


async def test_default_sources_on_the_live_host_report_what_is_there(state_db: StateDB) -> None:
    opts = LogwatchOptions()
    ctx = CollectorContext(kind="logwatch", instance="live", interval=0.05, timeout=5.0, state=state_db)
    collector = LogwatchCollector(ctx, opts)
    emitted: list[list[object]] = []
    task = asyncio.create_task(collector.run(lambda fams: emitted.append(list(fams))))
    try:
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()
    text = _exposition(emitted[-1])
    for source, state in _live_expectations(opts).items():
        assert sample_value(text, "mevwatch_log_source_status", source=source, status=state) == 1, source


async def test_a_pass_that_finds_nothing_new_emits_nothing(tmp_path: Path) -> None:
    log = tmp_path / "mev.log"
    log.write_bytes(b"")
    opts = LogwatchOptions.model_validate(
        {"sources": [{"name": "mev", "paths": [str(log)]}], "journal": {"enabled": False}})
    ctx = CollectorContext(kind="logwatch", instance="quiet", interval=0.02, timeout=5.0)
    collector = LogwatchCollector(ctx, opts)
    emitted: list[str] = []

    def emit(fams: Families) -> None:
        emitted.append(_exposition(list(fams)))

    async def settle(n: int) -> None:
        for _ in range(500):
            if len(emitted) >= n:
                return
            await asyncio.sleep(0.01)

    task = asyncio.create_task(collector.run(emit))
    try:
        await settle(1)
        await asyncio.sleep(0.5)  # 25 passes over the silent file
        assert len(emitted) == 1
        append(log, b"ERROR: order rejected\n")
        await settle(2)
        assert sample_value(emitted[-1], "mevwatch_log_lines_read_total", source="mev") == 1
        await asyncio.sleep(0.2)
        assert len(emitted) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # a new run (the supervisor restarts a failed stream) starts with an emit, though nothing changed
    task = asyncio.create_task(collector.run(emit))
    try:
        await settle(3)
        assert len(emitted) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()


def test_a_silent_log_stays_on_metrics_and_in_the_alert_engine(tmp_path: Path) -> None:
    log = tmp_path / "mev.log"
    log.write_bytes(b"")
    config = textwrap.dedent(
        f"""\
        collectors:
          - logwatch:
              interval: 200ms
              sources: [{{name: mev, paths: ["{log}"]}}]
              journal: {{enabled: false}}
        alerts:
          default_rules: false
          startup_grace: 0s
          rules:
            - {{name: LogGone, metric: mevwatch_log_source_status, absent: true, summary: s, runbook: strategy-errors}}
        """
    )
    with RunningDaemon(tmp_path, config) as daemon:
        daemon.wait_for("mevwatch_log_source_status", source="mev", status="ok")
        first = sample_value(daemon.get(), "mevwatch_collector_last_success_timestamp_seconds", collector="logwatch")
        deadline = time.monotonic() + 2.0  # 10 passes, 5x the 0.4 s after which an untouched snapshot is stale
        while time.monotonic() < deadline:
            text = daemon.get()
            assert sample_value(text, "mevwatch_log_source_status", source="mev", status="ok") == 1
            assert sample_value(text, "mevwatch_log_lines_read_total", source="mev") == 0
            rules = {r["name"]: r for r in json.loads(daemon.get("/api/v1/rules"))["data"]["rules"]}
            assert rules["LogGone"]["state"] == "inactive"
            time.sleep(0.05)
        # the silent passes emitted nothing: the last new values are those of the first pass
        text = daemon.get()
        assert sample_value(text, "mevwatch_collector_last_success_timestamp_seconds", collector="logwatch") == first
        append(log, b"ERROR: order rejected\n")
        daemon.wait_value("mevwatch_log_lines_read_total", 1, source="mev")
        assert json.loads(daemon.get("/api/v1/alerts"))["data"]["alerts"] == []


# --- passes on inotify's word -------------------------------------------------------------------


def _counting(collector: LogwatchCollector) -> list[float]:
    """Record the time of each pass over the files."""
    passes: list[float] = []
    poll = collector.tailer.poll

    def counted() -> tuple[bool, dict[str, SourceStats]] | None:
        passes.append(time.monotonic())
        return poll()

    collector.tailer.poll = counted  # type: ignore[method-assign]
    return passes


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _quiet_collector(globs: list[str], interval: float, rescan: float) -> LogwatchCollector:
    opts = LogwatchOptions.model_validate(
        {"sources": [{"name": "mev", "paths": globs}], "journal": {"enabled": False}, "rescan_interval": rescan})
    return LogwatchCollector(CollectorContext(kind="logwatch", instance="quiet", interval=interval, timeout=5.0), opts)


async def test_quiet_files_cost_no_pass_until_a_line_is_written(tmp_path: Path) -> None:
    log = tmp_path / "mev.log"
    log.write_bytes(b"")
    collector = _quiet_collector([str(log)], interval=0.02, rescan=60.0)
    passes = _counting(collector)
    emitted: list[str] = []
    task = asyncio.create_task(collector.run(lambda fams: emitted.append(_exposition(list(fams)))))
    try:
        await _until(lambda: len(emitted) == 1)
        await asyncio.sleep(0.5)  # 25 intervals
        assert len(passes) <= 2, passes  # the first pass, at most one more for the start's own events
        before = len(passes)
        written = time.monotonic()
        append(log, b"ERROR: order rejected\n")
        await _until(lambda: len(emitted) == 2)
        assert passes[before] - written < 1.0  # woken by inotify, not by the 60 s rescan
        assert sample_value(emitted[-1], "mevwatch_log_lines_read_total", source="mev") == 1
        # a file rotated in the same directory is a change too
        log.rename(tmp_path / "mev.log.1")
        log.write_bytes(b"ERROR: second\n")
        await _until(lambda: sample_value(emitted[-1], "mevwatch_log_lines_read_total", source="mev") == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()


SLOW_JOURNALCTL = """#!/bin/sh
sleep 0.5
printf '%s\\n' '{"__CURSOR":"c1","MESSAGE":"strategy: bundle rejected","PRIORITY":"3"}'
exec sleep 30
"""


async def test_a_journal_entry_goes_out_within_an_interval_though_no_file_changed(tmp_path: Path) -> None:
    (tmp_path / "run/systemd/journal").mkdir(parents=True)
    (tmp_path / "run/systemd/journal/socket").touch()
    exe = tmp_path / "journalctl"
    exe.write_text(SLOW_JOURNALCTL)
    exe.chmod(0o755)
    opts = LogwatchOptions.model_validate(
        {"sources": [], "journal": {"enabled": True, "journalctl": str(exe)}, "rescan_interval": 60})
    ctx = CollectorContext(kind="logwatch", instance="j", interval=0.05, timeout=5.0, paths=Paths(rootfs=tmp_path))
    collector = LogwatchCollector(ctx, opts)
    emitted: list[str] = []
    task = asyncio.create_task(collector.run(lambda fams: emitted.append(_exposition(list(fams)))))
    try:
        await _until(lambda: bool(emitted) and sample_value(
            emitted[-1], "mevwatch_log_matches_total", source="journal", pattern="priority_err") == 1, timeout=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()


async def test_a_directory_made_after_the_start_is_found_at_the_rescan(tmp_path: Path) -> None:
    collector = _quiet_collector([str(tmp_path / "later" / "*.log")], interval=0.02, rescan=0.3)
    passes = _counting(collector)
    emitted: list[str] = []
    task = asyncio.create_task(collector.run(lambda fams: emitted.append(_exposition(list(fams)))))
    try:
        await _until(lambda: len(emitted) == 1)
        assert sample_value(emitted[-1], "mevwatch_log_source_status", source="mev", status="missing") == 1
        (tmp_path / "later").mkdir()
        (tmp_path / "later" / "a.log").write_bytes(b"")
        await _until(lambda: sample_value(emitted[-1], "mevwatch_log_source_status", source="mev", status="ok") == 1)
        append(tmp_path / "later" / "a.log", b"ERROR: x\n")  # now watched: no rescan needed
        await _until(lambda: sample_value(emitted[-1], "mevwatch_log_lines_read_total", source="mev") == 1)
        assert len(passes) < 20  # rescans every 0.3 s and changes, not a pass every 0.02 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()


async def test_without_inotify_a_pass_runs_every_interval_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mevwatch.collectors.logwatch as logwatch_module

    class NoInotify:
        def __init__(self) -> None:
            raise OSError(24, "Too many open files")

    monkeypatch.setattr(logwatch_module, "DirWatch", NoInotify)
    log = tmp_path / "mev.log"
    log.write_bytes(b"")
    collector = _quiet_collector([str(log)], interval=0.02, rescan=60.0)
    passes = _counting(collector)
    task = asyncio.create_task(collector.run(lambda fams: None))
    try:
        await asyncio.sleep(0.4)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.close()
    assert len(passes) >= 5
    assert "logwatch_inotify_unavailable" in capsys.readouterr().out


async def test_dir_watch_follows_a_directory_removed_and_made_again(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    watch = DirWatch()
    try:
        watch.watch([str(d), str(tmp_path / "absent")])
        assert watch.watched == {str(d)}
        assert not await watch.wait(0.05)
        (d / "x.log").write_bytes(b"a\n")
        assert await watch.wait(1.0)
        assert not await watch.wait(0.05)  # the queued events were taken with the first
        (d / "x.log").unlink()
        d.rmdir()
        assert await watch.wait(1.0)
        await watch.wait(0.05)
        assert watch.watched == set()  # its watch went with it
        d.mkdir()
        watch.watch([str(d)])
        assert watch.watched == {str(d)}
        (d / "y.log").write_bytes(b"b\n")
        assert await watch.wait(1.0)
    finally:
        watch.close()


async def test_dir_watch_takes_names_that_are_not_utf8_and_two_names_of_one_directory(tmp_path: Path) -> None:
    odd = tmp_path / os.fsdecode(b"logs-\xff")
    odd.mkdir()
    (tmp_path / "alias").symlink_to(odd)
    watch = DirWatch()
    try:
        watch.watch([str(odd), str(tmp_path / "alias")])
        assert watch.watched == {str(odd), str(tmp_path / "alias")}
        watch.watch([str(odd)])  # one name dropped: the directory stays watched under the other
        (odd / os.fsdecode(b"\xfe.log")).write_bytes(b"a\n")
        assert await watch.wait(1.0)
    finally:
        watch.close()


@pytest.mark.parametrize(("pattern", "directory"), [
    ("/var/log/syslog", "/var/log"),
    ("/var/log/mev/*.log", "/var/log/mev"),
    ("/var/log/**/x.log", "/var/log"),
    ("/srv/*/logs/x.log", "/srv"),
    ("/x.log", "/"),
    ("/*/x.log", "/"),
])
def test_the_directory_watched_for_a_glob_is_the_one_before_its_first_wildcard(pattern: str, directory: str) -> None:
    assert LogTailer([FileSource("s", (pattern,), ())]).directories == {directory}
