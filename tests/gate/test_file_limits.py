"""User-supplied files (baselines, reports, configuration) are read with a size limit, from regular files only,
and every hostile one is one BaselineError / ConfigError line: devices, FIFOs, folders, huge files, JSON nested
past Python's recursion limit, numbers past float64."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.gate.baseline import BaselineError, load_snapshot
from lipcheck.gate.config import ConfigError, load_config
from lipcheck.readlimits import FileLimitError, read_limited, read_limited_text
from tests.gate.reports import report

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ read_limited


def test_read_limited_reads_a_regular_file_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 100)
    assert read_limited(path, 100) == b"x" * 100
    with pytest.raises(FileLimitError, match=r"baseline .*a\.json is 100 bytes, more than the 99 bytes") as info:
        read_limited(path, 99, what="baseline")
    _one_line(info)


def test_read_limited_refuses_devices_without_reading_them() -> None:
    start = time.perf_counter()
    with pytest.raises(FileLimitError, match=r"cannot read baseline /dev/zero: a character device, not a regular"):
        read_limited("/dev/zero", 64 << 20, what="baseline")
    assert time.perf_counter() - start < 5


def test_read_limited_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    done: list[str] = []

    def read() -> None:
        try:
            read_limited(fifo, 1000)
        except FileLimitError as exc:
            done.append(str(exc))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("read_limited blocked on a FIFO")
    assert done and "a FIFO (named pipe), not a regular file" in done[0]


def test_read_limited_refuses_a_folder_and_passes_missing_files_on(tmp_path: Path) -> None:
    with pytest.raises(FileLimitError, match="a directory, not a regular file"):
        read_limited(tmp_path, 1000)
    with pytest.raises(FileNotFoundError):
        read_limited(tmp_path / "missing.json", 1000)


def test_read_limited_text_refuses_bad_utf8_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"model": "caf\xe9"}')
    with pytest.raises(FileLimitError, match=r"not UTF-8 text \(byte 14 is 0xe9\)"):
        read_limited_text(path, 1000)


# ---------------------------------------------------------------------------------------------- baselines


def test_a_baseline_past_64_mib_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate((64 << 20) + 1)  # sparse: no disk used
    with pytest.raises(BaselineError, match=r"baseline .*huge\.json is 64 MiB, more than the 64 MiB lipcheck reads"):
        load_snapshot(path)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_as_baseline_is_one_line(path: str) -> None:
    with pytest.raises(BaselineError, match=f"cannot read baseline {path}: a character device") as info:
        load_snapshot(path)
    _one_line(info)


@pytest.mark.parametrize("opening", ["[", "{\"a\": ", "[{\"b\": "])
@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_json_nested_past_the_recursion_limit_is_one_line(opening: str, depth: int, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    closing = {"[": "]", "{\"a\": ": "}", "[{\"b\": ": "}]"}[opening]
    path.write_text(opening * depth + "1" + closing * depth)
    with pytest.raises(BaselineError, match=r"deep\.json is not a lipcheck report: its JSON is nested too deeply"):
        load_snapshot(path)


def test_numbers_past_float64_and_int_digit_limits_are_one_line(tmp_path: Path) -> None:
    data = json.loads(render_report_json())
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data).replace(f'"upper_bound": {json.dumps(data["upper_bound"])}',
                                             '"upper_bound": ' + "9" * 400))
    with pytest.raises(BaselineError, match=r"upper_bound: the number .* is out of float64's range"):
        load_snapshot(path)
    path.write_text('{"schema_version": 1, "upper_bound": ' + "9" * 5000 + "}")
    with pytest.raises(BaselineError, match=r"big\.json is not a lipcheck report: Exceeds the limit"):
        load_snapshot(path)


def test_an_empty_baseline_path_is_one_line() -> None:
    with pytest.raises(BaselineError, match="the baseline path is empty"):
        load_snapshot("")


def test_a_normal_baseline_still_loads() -> None:
    assert load_snapshot(GOLDEN / "cli_mlp.json").upper_bound is not None


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_snapshot_or_one_baseline_error(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "b.json"
        path.write_bytes(data)
        try:
            load_snapshot(path)
        except BaselineError as exc:
            assert "\n" not in str(exc)


def render_report_json() -> str:
    from lipcheck.report.formats import render_json

    return render_json(report())


# ------------------------------------------------------------------------------------------ configuration


def test_a_config_past_1_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lipcheck.toml"
    path.write_text("# padding\n" * 110_000)
    with pytest.raises(ConfigError, match=r"config file .*lipcheck\.toml is 1\.049 MiB, more than the 1 MiB"):
        load_config(path, cwd=tmp_path)


def test_a_device_as_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file /dev/zero is not a regular file"):
        load_config("/dev/zero", cwd=tmp_path)


def test_toml_nested_past_the_recursion_limit_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "lipcheck.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"lipcheck\.toml: invalid TOML") as info:
        load_config(path, cwd=tmp_path)
    _one_line(info)
