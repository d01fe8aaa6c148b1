"""lipcheck.files: every output is all or nothing, never replaces a special file, keeps the replaced file's
mode, publishes data before the file that refers to it, and leaves no staged file behind (SIGTERM: at once;
SIGKILL: on the next run)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lipcheck.files as files
from lipcheck.errors import LipcheckError, UsageError
from lipcheck.files import (
    STALE_AFTER,
    NotRegularFileError,
    atomic_outputs,
    check_output_path,
    remove_stale_staging,
    staged_outputs,
    write_text_atomically,
)

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets, signals and pids are POSIX")


@pytest.fixture(autouse=True)
def _fresh_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_SWEPT", set())  # each test's folder is swept as by a new process


def _staged(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".lipcheck-" in p.name)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _unix_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


# ------------------------------------------------------------------------------------------- destinations


@posix_only
def test_special_files_are_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    sock = _unix_socket(tmp_path / "sock")
    link_to_device = tmp_path / "null-link"
    link_to_device.symlink_to("/dev/null")
    try:
        for path, kind in [(fifo, "FIFO"), (folder, "directory"), (tmp_path / "sock", "socket"),
                           (Path("/dev/null"), "character device"), (link_to_device, "character device")]:
            with pytest.raises(NotRegularFileError, match=kind):
                with atomic_outputs([tmp_path / "ok.bin", path]) as temps:
                    for t in temps:
                        t.write_bytes(b"x")
            with pytest.raises(NotRegularFileError, match=kind):
                with staged_outputs(path) as stage:
                    (stage / path.name).write_bytes(b"x")
            with pytest.raises(UsageError, match=f"--out {path} is .*{kind}.*give a regular file's path"):
                check_output_path(path, "--out")
            if kind in ("directory", "socket"):
                with pytest.raises(LipcheckError, match=f"cannot write {path}: is .*{kind}"):
                    write_text_atomically(path, "report")
            elif kind == "FIFO":  # a report is streamed into a pipe; one nobody reads is an error, not a hang
                with pytest.raises(LipcheckError, match=f"cannot write {path}"):
                    write_text_atomically(path, "report")
            else:  # --output /dev/stdout, /dev/null: streamed into the device, which stays a device
                write_text_atomically(path, "report")
    finally:
        sock.close()
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and folder.is_dir() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert stat.S_ISSOCK((tmp_path / "sock").lstat().st_mode) and link_to_device.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "null-link", "sock"]


def test_empty_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="^--out is empty"):
        check_output_path("", "--out")
    with pytest.raises(LipcheckError, match="empty path"):
        write_text_atomically("", "report")


def test_a_symlink_is_followed_and_stays(tmp_path: Path) -> None:
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert check_output_path(link) == target.resolve()
    write_text_atomically(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "fresh.json")
    write_text_atomically(dangling, "fresh")
    assert dangling.is_symlink() and (tmp_path / "real" / "fresh.json").read_text() == "fresh"


# ------------------------------------------------------------------------------------------- publishing


def test_atomic_outputs_names_order_and_cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = tmp_path / "m.onnx.data", tmp_path / "m.onnx"
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with atomic_outputs([data, model]) as temps:
        assert [t.name.split(".lipcheck-tmp-")[0] for t in temps] == [".m.onnx.data", ".m.onnx"]
        assert all(f"-{os.getpid()}-" in t.name for t in temps)
        temps[0].write_bytes(b"D")
        temps[1].write_bytes(b"M")
    assert renamed == ["m.onnx.data", "m.onnx"]  # the data before the model that refers to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_a_failed_rename_leaves_the_data_never_a_model_without_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data, model = tmp_path / "m.onnx.data", tmp_path / "m.onnx"
    real_replace = os.replace
    calls = []

    def replace_once(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="Input/output"):
        with atomic_outputs([data, model]) as temps:
            temps[0].write_bytes(b"D")
            temps[1].write_bytes(b"M")
    assert not model.exists() and data.read_bytes() == b"D"
    assert _staged(tmp_path) == []


def test_staged_outputs_publishes_the_model_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with staged_outputs(tmp_path / "m.onnx") as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".m.onnx.lipcheck-stage-")
        for name in ("m.onnx", "m.onnx.data", "m.onnx.data.1", "a.bin"):
            (stage / name).write_bytes(name.encode())
    assert renamed[-1] == "m.onnx" and sorted(renamed) == ["a.bin", "m.onnx", "m.onnx.data", "m.onnx.data.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "m.onnx", "m.onnx.data", "m.onnx.data.1"]
    with pytest.raises(FileNotFoundError, match="nothing was staged"):
        with staged_outputs(tmp_path / "n.onnx") as stage:
            (stage / "n.onnx.data").write_bytes(b"")
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs(tmp_path / "m.onnx") as stage:
            (stage / "m.onnx").write_bytes(b"new")
            raise KeyboardInterrupt
    assert (tmp_path / "m.onnx").read_bytes() == b"m.onnx" and _staged(tmp_path) == []


def test_staged_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + ("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_outputs([tmp_path / "a", tmp_path / "b"]) as temps:
        for t in temps:
            t.write_bytes(b"x")
    assert events == ["fsync file", "fsync file", "replace", "replace", "fsync folder"]


@posix_only
def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text("old")
    old.chmod(0o640)
    with staged_outputs(tmp_path / "m.onnx") as stage:
        (stage / "m.onnx").write_bytes(b"M")
    write_text_atomically(old, "new")
    assert old.read_text() == "new" and stat.S_IMODE(old.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o666 & ~_umask()
    (tmp_path / "m.onnx").chmod(0o600)
    with staged_outputs(tmp_path / "m.onnx") as stage:
        (stage / "m.onnx").write_bytes(b"M2")
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give files away")
def test_as_root_a_replaced_file_keeps_its_owner(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    out.write_text("old")
    os.chown(out, 1234, 2345)
    out.chmod(0o640)
    write_text_atomically(out, "new")
    st = out.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), out.read_text()) == (1234, 2345, 0o640, "new")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_failed_write_is_one_line_naming_the_file(code: int, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.json"

    def fail(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(LipcheckError) as info:
        write_text_atomically(out, "report")
    assert str(info.value) == f"cannot write {out}: {os.strerror(code)}"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ stale staged files


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@posix_only
def test_stale_staged_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    host = files._HOST
    dead = _dead_pid()
    stale_file = tmp_path / f".m.onnx.lipcheck-tmp-{host}-{dead}-0123abcd"
    stale_folder = tmp_path / f".m.onnx.lipcheck-stage-{host}-{dead}-0123abcd"
    live = tmp_path / f".m.onnx.lipcheck-tmp-{host}-1-0123abcd"  # pid 1 runs
    mine = tmp_path / f".m.onnx.lipcheck-tmp-{host}-{os.getpid()}-0123abcd"
    other_host = tmp_path / f".m.onnx.lipcheck-tmp-ffffffff-{dead}-0123abcd"
    old = tmp_path / ".m.onnx.lipcheck-tmp-ffffffff-1-4567abcd"
    foreign = [tmp_path / ".m.onnx.tmp-0123abcd", tmp_path / "m.onnx.lipcheck-tmp-x", tmp_path / "m.onnx"]
    for p in [stale_file, live, mine, other_host, old, *foreign]:
        p.write_bytes(b"staged")
    stale_folder.mkdir()
    (stale_folder / "m.onnx.data").write_bytes(b"a full copy")
    long_ago = time.time() - STALE_AFTER - 60
    os.utime(old, (long_ago, long_ago))
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_folder, old])
    assert sorted(p for p in tmp_path.iterdir()) == sorted([live, mine, other_host, *foreign])
    assert remove_stale_staging(tmp_path) == []  # once per folder and process


@posix_only
def test_the_next_write_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    leftover = tmp_path / f".r.json.lipcheck-tmp-{files._HOST}-{_dead_pid()}-0123abcd"
    leftover.write_bytes(b"half a report")
    write_text_atomically(tmp_path / "other.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lipcheck.files import atomic_outputs, staged_outputs
    out, how = Path(sys.argv[1]), sys.argv[2]
    if how == "handler":
        import signal
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
    if how == "staged":
        with staged_outputs(out) as stage:
            (stage / (out.name + ".data")).write_bytes(b"d" * 100000)
            (stage / out.name).write_bytes(b"m")
            print("ready", flush=True)
            time.sleep(60)
    else:
        with atomic_outputs([out]) as (tmp,):
            tmp.write_bytes(b"x" * 100000)
            print("ready", flush=True)
            time.sleep(60)
""")


def _start(out: Path, how: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), how], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


@posix_only
@pytest.mark.parametrize("how", ["atomic", "staged"])
def test_sigterm_mid_write_removes_the_staged_files_and_still_ends_the_process(how: str, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous")
    child = _start(out, how)
    assert _staged(tmp_path)  # a staged copy exists mid-write
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx"] and out.read_bytes() == b"previous"


@posix_only
def test_an_applications_own_sigterm_handler_is_kept(tmp_path: Path) -> None:
    child = _start(tmp_path / "o.json", "handler")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 7  # the application's handler ran (sys.exit(7)); the temporary file is gone
    assert list(tmp_path.iterdir()) == []


@posix_only
def test_sigkill_mid_write_is_cleaned_on_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    child = _start(out, "staged")
    child.kill()
    child.wait(timeout=60)
    assert len(_staged(tmp_path)) == 1  # SIGKILL cannot be caught: the staging folder stays ...
    with staged_outputs(out) as stage:  # ... until the next run into that folder
        (stage / out.name).write_bytes(b"m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx"]
