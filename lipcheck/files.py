"""All-or-nothing creation of output files (a model and its data files, reports, baselines), for every writer.

:func:`atomic_outputs` hands out temporary files next to the final paths (same folder, so the final
``os.replace`` is a rename on one filesystem, atomic per file); the caller writes into them. On a normal exit
every temporary file is flushed to disk (``fsync``) and renamed onto its final path, in the order given; on
any exception, ``KeyboardInterrupt`` included, every temporary file is removed and no final path is touched.

What it cannot promise: the renames of several files are not one transaction. If a rename itself fails
(disk removed, permissions changed meanwhile), the files renamed before it stay in place; list a model
AFTER its data files so that a model file never appears before the data it refers to.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

_ATTEMPTS = 100  # fresh random names to try when a temporary name is taken


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield one new, empty temporary file per final path (``.{name}.tmp-XXXXXXXX`` in the same folder).

    On a normal exit each temporary file is fsynced and ``os.replace``-d onto its final path (in the order of
    ``paths``), then the folders are fsynced (best effort). On an exception nothing is renamed, every
    temporary file is removed, and the exception propagates.
    Permissions follow the umask, as for a new file; a replaced file keeps its own.
    Raises ``ValueError`` when two paths are the same file, ``FileNotFoundError`` when a folder is missing.
    """
    finals = [Path(p) for p in paths]
    seen: set[Path] = set()
    for p in finals:
        key = p.absolute()
        if key in seen:
            raise ValueError(f"atomic_outputs: {p} is listed twice")
        seen.add(key)
    temps: list[Path] = []
    try:
        for p in finals:
            temps.append(_new_temp(p))
        yield list(temps)
        for t, p in zip(temps, finals):
            with contextlib.suppress(OSError):
                os.chmod(t, p.stat().st_mode & 0o7777)  # replacing a file keeps its permissions
            _fsync_file(t)
        for i, (t, p) in enumerate(zip(temps, finals)):
            os.replace(t, p)
            temps[i] = p  # done: no longer ours to remove
        for folder in sorted({p.parent for p in finals}):
            _fsync_folder(folder)
    except BaseException:
        for t, p in zip(temps, finals):
            if t != p:
                with contextlib.suppress(OSError):
                    t.unlink()
        raise


def _new_temp(final: Path) -> Path:
    """Create ``.{name}.tmp-XXXXXXXX`` next to ``final`` (exclusively: never an existing file)."""
    for _ in range(_ATTEMPTS):
        temp = final.parent / f".{final.name}.tmp-{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp
    raise FileExistsError(f"could not create a temporary file next to {final}")


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


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, creating missing parent folders. Raises
    :class:`~lipcheck.errors.LipcheckError` naming the path when the file cannot be written."""
    from lipcheck.errors import LipcheckError

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([target]) as (tmp,):
            tmp.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise LipcheckError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
