"""All-or-nothing creation of output files (a model and its data files, reports, baselines), for every writer.

Two ways to stage, one way to publish:

- :func:`atomic_outputs` hands out temporary files next to the final paths (same folder, so the final
  ``os.replace`` is a rename on one filesystem, atomic per file); the caller writes into them.
- :func:`staged_outputs` hands out a private folder next to a model's final path; the caller writes the model
  there under its final name together with the files it refers to (``<name>.data``), so that the staged copy
  can be loaded and checked before it is published.

On a normal exit every staged file is flushed to disk (``fsync``), given the mode (and, as root, the owner) of
the file it replaces, and renamed onto its final path; a model's data files BEFORE the model, so that a model
file never appears before the data it refers to; then the folders are fsynced (best effort). On any exception,
``KeyboardInterrupt`` and SIGTERM / SIGHUP included, every staged file is removed and no final path is touched
(a SIGTERM then still ends the process, as it would have without lipcheck's handler).

Safety rules for every output:

- an existing destination must be a regular file: a device (``/dev/null``), FIFO, socket or folder is never
  replaced (:class:`NotRegularFileError`); a symlink is followed, the file it points to is replaced and the
  link stays;
- staged files are named ``.{name}.lipcheck-{tmp|stage}-{host}-{pid}-{random}``. SIGKILL cannot be caught: the
  next lipcheck that writes into the same folder removes the staged files of processes that no longer run
  (on this host), and any older than :data:`STALE_AFTER` seconds.

What it cannot promise: the renames of several files are not one transaction. If the process dies (or a rename
fails) between two renames, the files renamed before it stay in place: a new data file beside the previous
model file, which still finds every file it refers to, but now with the new data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from lipcheck.readlimits import file_kind

log = logging.getLogger(__name__)

__all__ = ["STALE_AFTER", "NotRegularFileError", "atomic_outputs", "check_output_path", "remove_stale_staging",
           "staged_outputs", "write_text_atomically"]

_ATTEMPTS = 100  # fresh random names to try when a temporary name is taken
STALE_AFTER = 24 * 3600.0  # seconds: a staged file this old is removed even when its pid runs (pid reuse)
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # pids are only checked on their own host
_STAGED = re.compile(r"^\..+\.lipcheck-(?:tmp|stage)-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}$")
_SWEPT: set[Path] = set()  # folders already cleaned of stale staged files by this process
_CAUGHT = ("SIGTERM", "SIGHUP")  # signals that would end the process without running any cleanup


class NotRegularFileError(OSError):
    """An output path names an existing device, FIFO, socket or folder: lipcheck never replaces one."""


# ---------------------------------------------------------------------------------------------- public API


def check_output_path(path: str | os.PathLike[str], option: str = "output") -> Path:
    """The file an output path will replace or create: ``path`` with symlinks resolved. Raises
    :class:`~lipcheck.errors.UsageError` (one line, naming ``option`` and the path) when ``path`` is empty
    or names an existing device, FIFO, socket or folder. Call it before any work; the writers check again."""
    from lipcheck.errors import UsageError

    if os.fspath(path) == "":
        raise UsageError(f"{option} is empty: give the output file's path")
    try:
        return _destination(Path(path))
    except NotRegularFileError as exc:
        raise UsageError(f"{option} {os.fspath(path)} {exc.strerror}: give a regular file's path") from exc


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield one new, empty temporary file per final path (``.{name}.lipcheck-tmp-…`` in the same folder).

    On a normal exit each temporary file is fsynced, given the mode of the file it replaces (a new file keeps
    the umask's), and ``os.replace``-d onto its final path (in the order of ``paths``: list a model AFTER its
    data files), then the folders are fsynced (best effort). On an exception (SIGTERM included) nothing is
    renamed, every temporary file is removed, and the exception propagates.
    Raises ``ValueError`` when two paths are the same file, ``FileNotFoundError`` when a folder is missing,
    :class:`NotRegularFileError` when a final path is a device, FIFO, socket or folder.
    """
    finals = [_destination(Path(p)) for p in paths]
    seen: set[Path] = set()
    for given, p in zip(paths, finals):
        if p in seen:
            raise ValueError(f"atomic_outputs: {os.fspath(given)} is listed twice")
        seen.add(p)
    for folder in {p.parent for p in finals}:
        remove_stale_staging(folder)
    with _cleanup_on_termination():
        temps: list[Path] = []
        try:
            for p in finals:
                temps.append(_new_temp(p))
            yield list(temps)

            def renamed(i: int) -> None:
                temps[i] = finals[i]  # no longer ours to remove

            _publish(list(zip(temps, finals)), done=renamed)
        except BaseException:
            for t, p in zip(temps, finals):
                if t != p:
                    with contextlib.suppress(OSError):
                        t.unlink()
            raise


@contextlib.contextmanager
def staged_outputs(main: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new, private, empty folder next to ``main`` (``.{name}.lipcheck-stage-…``). The caller writes
    ``main``'s file into it under ``main``'s final name, with any files it refers to under theirs.

    On a normal exit every file of the folder is published into ``main``'s folder (as :func:`atomic_outputs`
    does: fsync, the replaced file's mode, ``os.replace``): the other files first, ``main`` last. On an
    exception (SIGTERM included) nothing is published. The folder is removed in either case.
    Raises :class:`NotRegularFileError` when a final path is a device, FIFO, socket or folder,
    ``FileNotFoundError`` when ``main``'s folder is missing or nothing was written for ``main``.
    """
    final = _destination(Path(main))
    remove_stale_staging(final.parent)
    with _cleanup_on_termination():
        folder = _new_staging(final, "stage", lambda p: p.mkdir(mode=0o700))
        try:
            yield folder
            staged = folder / final.name
            if not staged.is_file():
                raise FileNotFoundError(errno.ENOENT, "nothing was staged for it", os.fspath(final))
            others = sorted(p.name for p in folder.iterdir() if p.name != final.name and p.is_file()
                            and not p.is_symlink())
            pairs = [(folder / n, _destination(final.parent / n)) for n in others] + [(staged, final)]
            _publish(pairs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def remove_stale_staging(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the files and folders lipcheck staged in ``folder`` and left behind (a process killed by SIGKILL,
    a power cut): those of a process that no longer runs on this host, and any older than :data:`STALE_AFTER`.
    Each folder is swept once per process; returns what was removed. Never raises."""
    key = Path(os.path.abspath(folder))
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(key))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGED.match(entry.name)
        if match is None or not _is_stale(entry, match):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.debug("cannot remove the stale staged file %s: %s", entry.path, exc)
            continue
        log.debug("removed the stale staged file %s", entry.path)
        removed.append(Path(entry.path))
    return removed


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, creating missing parent folders. A character device or
    FIFO at ``path`` (``--output /dev/stdout``, a pipe) is written into as a stream, never replaced. Raises
    :class:`~lipcheck.errors.LipcheckError` naming the path when the file cannot be written (a folder or socket
    at ``path`` included)."""
    from lipcheck.errors import LipcheckError

    target = Path(path)
    if os.fspath(path) == "":
        raise LipcheckError("cannot write an output to an empty path")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = 0
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        try:
            # non-blocking open: a FIFO nobody reads is an error (ENXIO), not a hang
            fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            with open(fd, "w", encoding="utf-8", newline="") as stream:
                stream.write(text)
        except OSError as exc:
            raise LipcheckError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([target]) as (tmp,):
            tmp.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise LipcheckError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc


# ------------------------------------------------------------------------------------------- destinations


def _destination(path: Path) -> Path:
    """``path`` with symlinks resolved, when it is free or a regular file; else NotRegularFileError."""
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except OSError:  # missing (created), or unreachable: the write itself reports that
        return real
    if stat.S_ISREG(mode):
        return real
    kind = file_kind(mode)
    via = f" (the link's target {real})" if real != Path(os.path.abspath(path)) else ""
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    raise NotRegularFileError(code, f"is {kind}{via}, not a regular file (lipcheck never replaces one)",
                              os.fspath(path))


# ---------------------------------------------------------------------------------------------- staging


def _new_temp(final: Path) -> Path:
    """Create ``.{name}.lipcheck-tmp-…`` next to ``final`` (exclusively: never an existing file)."""

    def create(path: Path) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

    return _new_staging(final, "tmp", create)


def _new_staging(final: Path, kind: str, create: Callable[[Path], None]) -> Path:
    for _ in range(_ATTEMPTS):
        path = final.parent / f".{final.name}.lipcheck-{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "could not create a staging file next to it", os.fspath(final))


def _is_stale(entry: os.DirEntry[str], match: re.Match[str]) -> bool:
    pid = int(match["pid"])
    if match["host"] == _HOST and pid != os.getpid() and not _pid_runs(pid):
        return True
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    return age > STALE_AFTER


def _pid_runs(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (True when it cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


# --------------------------------------------------------------------------------------------- publishing


def _publish(pairs: Sequence[tuple[Path, Path]], done: Callable[[int], None] | None = None) -> None:
    """Rename each staged file onto its final path, in order, after giving it the replaced file's mode (and
    owner, as root) and fsyncing it; then fsync the folders. ``done(i)`` after the i-th rename."""
    for temp, final in pairs:
        _destination(final)  # again: a FIFO or device may have appeared meanwhile
        _adopt_metadata(temp, final)
        _fsync_file(temp)
    for i, (temp, final) in enumerate(pairs):
        os.replace(temp, final)
        if done is not None:
            done(i)
    for folder in sorted({final.parent for _, final in pairs}):
        _fsync_folder(folder)


def _adopt_metadata(temp: Path, final: Path) -> None:
    """A replaced file keeps its permission bits and, when lipcheck runs as root, its owner and group."""
    try:
        st = os.stat(final)
    except OSError:
        return  # a new file: the umask's mode
    with contextlib.suppress(OSError):
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            os.chown(temp, st.st_uid, st.st_gid)
    with contextlib.suppress(OSError):
        os.chmod(temp, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid / setgid bits


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable where the platform allows it (POSIX); elsewhere nothing to do."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- signals


class _Terminated(BaseException):
    """Raised by the SIGTERM / SIGHUP handler so that every ``finally`` removes its staged files."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _cleanup_on_termination() -> Iterator[None]:
    """While staged files exist: SIGTERM / SIGHUP raise :class:`_Terminated` (only where they would have ended
    the process, i.e. with the default handler, in the main thread), the staged files are removed on the way
    out, then the process ends by the same signal. Nested uses leave it to the outermost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in installed:  # a second signal must not interrupt the cleanup (the process ends after it anyway)
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, signal.SIG_IGN)
        raise _Terminated(signum)

    try:
        for signum in (getattr(signal, name) for name in _CAUGHT if hasattr(signal, name)):
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, handler)
                    installed.append(signum)
        yield
    except _Terminated as exc:
        if not installed:
            raise
        _restore(installed, handler)
        os.kill(os.getpid(), exc.signum)  # the default action: the process ends here, its staged files gone
        raise
    finally:
        _restore(installed, handler)


def _restore(installed: list[int], handler: object) -> None:
    for signum in installed:
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signum) in (handler, signal.SIG_IGN):
                signal.signal(signum, signal.SIG_DFL)
