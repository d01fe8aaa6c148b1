"""`lipcheck normalize --out`: what it writes and what it never touches. A device, FIFO, socket or folder at
the output is refused (one line, exit 2) and left as it was; the input model and its data files are never
modified; the data file is published before the model that refers to it; a full or read-only disk is one line
with nothing left behind; SIGTERM leaves nothing, SIGKILL's leftovers go on the next run; a replaced output keeps
its mode."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

import lipcheck
import lipcheck.files as files
from lipcheck.cli.app import app
from lipcheck.errors import LipcheckError
from lipcheck.normalize import normalize

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
runner = CliRunner()
posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and signals are POSIX")


@pytest.fixture(autouse=True)
def _fresh_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_SWEPT", set())  # each test's folders are swept as by a new process


def _external(folder: Path, name: str = "m.onnx", location: str | None = None) -> Path:
    """mlp.onnx with every initializer in an external data file (``<name>.data`` unless ``location``)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(SAMPLES / "mlp.onnx"))
    path = folder / name
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location or f"{name}.data", size_threshold=0)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _normalize(model: Path | str, out: str, *more: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["normalize", str(model), "--out", out, "--no-progress", "--method", "product", *more])
    return result.exit_code, result.stderr.splitlines()


def _loads_with_its_data(model: Path) -> bool:
    onnx.load(str(model), load_external_data=True)  # raises when a referenced data file is missing or short
    return True


# ------------------------------------------------------------------------------------ special destinations


@posix_only
def test_dev_null_is_refused_and_stays_a_device() -> None:
    code, lines = _normalize(SAMPLES / "mlp.onnx", "/dev/null")
    assert code == 2 and len(lines) == 1
    assert lines[0] == ("error: --out /dev/null is a character device, not a regular file (lipcheck never "
                        "replaces one): give a regular file's path")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@posix_only
@pytest.mark.parametrize("kind", ["fifo", "socket", "folder", "link to a device", "link to a fifo",
                                  "fifo at the data file"])
def test_special_destinations_are_refused_and_left_alone(kind: str, tmp_path: Path) -> None:
    source = _external(tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    sock = None
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(out))
    elif kind == "folder":
        out.mkdir()
    elif kind == "link to a device":
        out.symlink_to("/dev/null")
    elif kind == "link to a fifo":
        os.mkfifo(out_dir / "fifo")
        out.symlink_to(out_dir / "fifo")
    else:
        os.mkfifo(out_dir / "o.onnx.data")
    before = sorted((p.name, stat.S_IFMT(p.lstat().st_mode)) for p in out_dir.iterdir())
    try:
        code, lines = _normalize(source, str(out))
    finally:
        if sock is not None:
            sock.close()
    assert code == 2 and len(lines) == 1, lines
    assert "not a regular file" in lines[0] and str(out) in lines[0]
    assert sorted((p.name, stat.S_IFMT(p.lstat().st_mode)) for p in out_dir.iterdir()) == before


def test_empty_out_is_one_line() -> None:
    code, lines = _normalize(SAMPLES / "mlp.onnx", "")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --out is empty: give ")
    with pytest.raises(LipcheckError, match="--out is empty"):
        normalize(SAMPLES / "mlp.onnx", "")


def test_a_symlinked_output_replaces_the_file_it_points_to(tmp_path: Path) -> None:
    source = _external(tmp_path / "src")
    target = tmp_path / "out" / "o.onnx"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    link = tmp_path / "out" / "latest.onnx"
    link.symlink_to(target.name)
    code, lines = _normalize(source, str(link))
    assert code == 0, lines
    assert link.is_symlink() and os.readlink(link) == "o.onnx"
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.onnx", "o.onnx", "o.onnx.data"]
    assert _loads_with_its_data(target)
    assert all(layer.sigma_upper <= 1.0 for layer in lipcheck.analyze(target, lower_bound=False).layers)


# ------------------------------------------------------------------------------------ the input is read only


@pytest.mark.parametrize("variant", ["same path", "other spelling", "symlink", "hardlink", "its data file",
                                     "its data file's name"])
def test_out_onto_the_input_or_its_data_is_refused(variant: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    if variant == "its data file's name":  # --out o.onnx would write o.onnx.data: the input's data file
        source = _external(src, "m.onnx", location="o.onnx.data")
        out = src / "o.onnx"
    else:
        source = _external(src)
        out = {"same path": source, "other spelling": src / ".." / "src" / "m.onnx",
               "symlink": tmp_path / "link.onnx", "hardlink": tmp_path / "hard.onnx",
               "its data file": src / "m.onnx.data"}[variant]
    if variant == "symlink":
        out.symlink_to(source)
    elif variant == "hardlink":
        os.link(source, out)
    before = _digests(src)
    code, lines = _normalize(source, str(out))
    assert code == 2 and len(lines) == 1, lines
    assert "is the input model (or one of its data files)" in lines[0] and "never modifies its input" in lines[0]
    assert _digests(src) == before


# --------------------------------------------------------------------------------------------- publishing


def _replace_calls_into(folder: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int | None) -> list[str]:
    """Record the renames into ``folder``; raise EIO on the one after the first ``fail_after`` (a kill)."""
    calls: list[str] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).parent == folder:
            if fail_after is not None and len(calls) >= fail_after:
                raise OSError(errno.EIO, "Input/output error")
            calls.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_the_data_file_is_published_before_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    calls = _replace_calls_into(out.parent, monkeypatch, fail_after=None)
    code, lines = _normalize(source, str(out))
    assert code == 0, lines
    assert calls == ["o.onnx.data", "o.onnx"]
    assert _loads_with_its_data(out)


@pytest.mark.parametrize("previous", [False, True])
def test_dying_between_the_data_and_the_model_leaves_a_loadable_model_or_none(
        previous: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    if previous:
        assert _normalize(source, str(out), "--target", "2")[0] == 0
    calls = _replace_calls_into(out.parent, monkeypatch, fail_after=1)
    code, lines = _normalize(source, str(out))
    assert code == 2 and lines == [f"error: cannot write {out}: Input/output error"]
    assert calls == ["o.onnx.data"]
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["o.onnx", "o.onnx.data"] if previous else names == ["o.onnx.data"]  # no staging folder
    if previous:
        assert _loads_with_its_data(out)  # the model never refers to data that is not there


# ------------------------------------------------------------------------------------ full / read-only disk


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["writing the model", "creating the staging folder"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
        code: int, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.normalize.onnx_writer as onnx_writer

    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()

    if where == "writing the model":
        def write_model(model: onnx.ModelProto, path: Path) -> None:
            path.write_bytes(b"half a model")
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(onnx_writer, "_write_model", write_model)
    else:
        def new_staging(final: Path, kind: str, create: object) -> Path:
            raise OSError(code, os.strerror(code), str(final.parent / f".{final.name}.lipcheck-stage-x"))

        monkeypatch.setattr(files, "_new_staging", new_staging)
    exit_code, lines = _normalize(source, str(out))
    assert exit_code == 2 and lines == [f"error: cannot write {out}: {os.strerror(code)}"]
    assert list(out.parent.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        code, lines = _normalize(SAMPLES / "mlp.onnx", str(out_dir / "o.onnx"))
    finally:
        out_dir.chmod(0o755)
    assert code == 2 and lines == [f"error: cannot write {out_dir / 'o.onnx'}: Permission denied"]
    assert list(out_dir.iterdir()) == []


def test_a_full_disk_writing_a_torch_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.jit, "save", full)
    out = tmp_path / "o.pt"
    with pytest.raises(LipcheckError) as info:
        normalize(SAMPLES / "torch" / "mlp.ts.pt", out, input_shape=(1, 1, 16, 16))
    assert str(info.value) == f"cannot write {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- metadata


@posix_only
def test_a_replaced_output_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path: Path) -> None:
    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    assert _normalize(source, str(out), "--target", "2")[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.parent.iterdir()} == {0o666 & ~umask}
    out.chmod(0o640)
    (out.parent / "o.onnx.data").chmod(0o600)
    before = _digests(out.parent)
    assert _normalize(source, str(out))[0] == 0
    assert _digests(out.parent) != before  # replaced ...
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # ... with the permissions it had
    assert stat.S_IMODE((out.parent / "o.onnx.data").stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------------ signals


_CHILD = textwrap.dedent("""
    import sys, time
    import lipcheck.normalize.onnx_writer as onnx_writer
    from lipcheck.normalize import normalize

    def slow_write(model, path):
        with open(path, "wb") as fh:
            fh.write(model.SerializeToString())
        print("ready", flush=True)
        time.sleep(120)

    onnx_writer._write_model = slow_write
    normalize(sys.argv[1], sys.argv[2])
""")


def _start_normalize(source: Path, out: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(source), str(out)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


@pytest.mark.slow
@posix_only
def test_sigterm_mid_write_leaves_nothing_staged(tmp_path: Path) -> None:
    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    assert _normalize(source, str(out), "--target", "2")[0] == 0
    before = _digests(out.parent)
    child = _start_normalize(source, out)
    assert any(".lipcheck-stage-" in p.name for p in out.parent.iterdir())  # a full copy, staged
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == -signal.SIGTERM
    assert _digests(out.parent) == before and len(list(out.parent.iterdir())) == 2


@posix_only
def test_sigkill_mid_write_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    source = _external(tmp_path / "src")
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    child = _start_normalize(source, out)
    child.kill()
    child.wait(timeout=120)
    staged = [p.name for p in out.parent.iterdir()]
    assert len(staged) == 1 and ".lipcheck-stage-" in staged[0]  # SIGKILL cannot be caught ...
    code, lines = _normalize(source, str(tmp_path / "out" / "other.onnx"))  # ... the next run into the folder
    assert code == 0, lines
    assert sorted(p.name for p in out.parent.iterdir()) == ["other.onnx", "other.onnx.data"]
