"""Access logs: nginx's escaping and time format, buffering, the flush timer, the targets."""

from __future__ import annotations

import base64
import logging
import re
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway._access_log import (
    FLUSH_BYTES,
    FLUSH_INTERVAL,
    AccessLog,
    basic_user,
    combined_line,
    escape,
    open_access_log,
    reopen_access_logs,
    time_local,
)


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        (b"curl/8.5.0", b"curl/8.5.0"),
        (b"", b"-"),
        (None, b"-"),
        (b'say "hi"', b"say \\x22hi\\x22"),
        (b"back\\slash", b"back\\x5Cslash"),
        (b"a\r\n1.2.3.4 - - [x] forged", b"a\\x0D\\x0A1.2.3.4 - - [x] forged"),
        (b"tab\there", b"tab\\x09here"),
        ("café".encode(), b"caf\\xC3\\xA9"),
        (b"\x7f", b"\\x7F"),
    ],
)
def test_escape_as_nginx(value: bytes | None, logged: bytes) -> None:
    assert escape(value) == logged


def test_a_client_cannot_forge_a_line() -> None:
    line = combined_line(
        b"01/Jan/2025:00:00:00 +0000",
        "10.0.0.1",
        b'GET /x"\r\nevil HTTP/1.1',
        200,
        5,
        user_agent=b'ua"\n127.0.0.1 - - [01/Jan/2025:00:00:00 +0000] "GET /admin HTTP/1.1" 200 0',
        referer=b"\x00",
    )
    assert b"\n" not in line
    assert b"\r" not in line
    # the quotes that delimit fields are the format's own: exactly 6
    assert line.count(b'"') == 6


def test_combined_format() -> None:
    line = combined_line(
        b"10/Oct/2000:13:55:36 -0700",
        "127.0.0.1",
        b"GET /apache_pb.gif HTTP/1.0",
        200,
        2326,
        remote_user=b"frank",
        referer=b"http://www.example.com/start.html",
        user_agent=b"Mozilla/4.08 [en] (Win98; I ;Nav)",
    )
    assert line == (
        b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
        b'"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
    )
    bare = combined_line(b"T", "::1", b"HEAD / HTTP/1.1", 404, 0)
    assert bare == b'::1 - - [T] "HEAD / HTTP/1.1" 404 0 "-" "-"'


def test_time_local_format() -> None:
    stamp = time_local(971211336.0).decode()
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", stamp)
    assert stamp == time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(971211336.0))


def test_basic_user() -> None:
    token = base64.b64encode(b"frank:secret").decode()
    assert basic_user(f"Basic {token}".encode()) == b"frank"
    assert basic_user(f"basic {token}".encode()) == b"frank"
    assert basic_user(b"Bearer abc") is None
    assert basic_user(b"Basic !!!") is None
    assert basic_user(b"Basic " + base64.b64encode(b"nocolon")) is None
    assert basic_user(None) is None


def test_time_is_formatted_once_per_second(tmp_path: Path) -> None:
    now = [1000.2]
    log = AccessLog(tmp_path / "a.log", clock=lambda: now[0])
    first = log.stamp()
    now[0] = 1000.9
    assert log.stamp() is first  # the same object: not formatted again
    now[0] = 1001.0
    assert log.stamp() != first
    log.close()


def test_lines_are_buffered_until_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"  # the directory is created
    log = AccessLog(path)
    assert path.exists()
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()
    log.write(b"one")
    log.write(b"two")
    assert path.read_bytes() == b""
    line = b"x" * 1023
    while path.read_bytes() == b"":
        log.write(line)
        assert log.buffered < FLUSH_BYTES + 1024
    written = path.read_bytes()
    assert written.startswith(b"one\ntwo\n")
    assert written.endswith(b"x\n")
    assert len(written) >= FLUSH_BYTES
    assert log.buffered == 0
    log.write(b"last")
    log.close()
    assert path.read_bytes().endswith(b"x\nlast\n")


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b"before\n")
    first, second = AccessLog(path), AccessLog(path)
    first.write(b"a")
    second.write(b"b")
    second.flush()
    first.flush()
    first.close()
    second.close()
    assert path.read_bytes() == b"before\nb\na\n"


async def test_flushed_every_second_and_on_exit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "access.log"
    async with open_access_log(path) as log:
        assert log is not None
        log.write(b"one")
        await trio.sleep(FLUSH_INTERVAL / 2)
        assert path.read_bytes() == b""
        await trio.sleep(FLUSH_INTERVAL)
        assert path.read_bytes() == b"one\n"
        log.write(b"two")
    assert path.read_bytes() == b"one\ntwo\n"


async def test_off_is_none() -> None:
    async with open_access_log("off") as log:
        assert log is None


async def test_stdout_and_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    async with open_access_log("stdout") as out, open_access_log("stderr") as err:
        assert out is not None
        assert err is not None
        out.write(b"to stdout")
        err.write(b"to stderr")
    captured = capfd.readouterr()
    assert captured.out == "to stdout\n"
    assert captured.err == "to stderr\n"


def test_reopen_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    log.write(b"old")
    path.rename(tmp_path / "access.log.1")
    log.write(b"buffered")  # written before the reopen: with the old lines
    log.reopen()
    assert path.read_bytes() == b""
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()
    log.write(b"new")
    log.close()
    assert (tmp_path / "access.log.1").read_bytes() == b"old\nbuffered\n"
    assert path.read_bytes() == b"new\n"


def test_reopen_failure_keeps_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(path)
    log.write(b"before")
    (tmp_path / "logs").rename(tmp_path / "gone")  # the directory is not created again
    with caplog.at_level(logging.ERROR, logger="gateway"):
        log.reopen()
    assert "cannot reopen" in caplog.text
    log.write(b"after")
    log.close()
    assert not path.exists()
    assert (tmp_path / "gone" / "access.log").read_bytes() == b"before\nafter\n"


async def test_reopen_access_logs_reopens_the_open_file_logs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "access.log"
    async with open_access_log(path) as log, open_access_log("stdout") as out:
        assert log is not None
        assert out is not None
        log.write(b"old")
        out.write(b"out")
        path.rename(tmp_path / "access.log.1")
        reopen_access_logs()  # stdout: nothing to reopen
        log.write(b"new")
    reopen_access_logs()  # closed logs are no longer registered
    assert (tmp_path / "access.log.1").read_bytes() == b"old\n"
    assert path.read_bytes() == b"new\n"
    assert capfd.readouterr().out == "out\n"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
