"""Limits on what lipcheck accepts from its user: the size of the files it reads (baselines, reports,
configuration), and the size of tensor shapes (``--input-shape``, a model's declared input shapes).

Every user-supplied text file is read with :func:`read_limited`: a regular file only (never ``/dev/zero``, a
FIFO or a terminal, which could block or never end), and never more than a stated number of bytes, so that a
wrong path fails at once with one line instead of filling memory.

This module imports nothing heavy: the CLI uses it before any model is loaded.
"""

from __future__ import annotations

import errno
import os
import stat

from lipcheck.errors import LipcheckError

__all__ = [
    "MAX_BASELINE_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_DIM",
    "MAX_INPUT_ELEMENTS",
    "FileLimitError",
    "read_limited",
    "read_limited_text",
]

MAX_BASELINE_BYTES = 64 << 20  # a baseline / JSON report: real ones are kilobytes
MAX_CONFIG_BYTES = 1 << 20  # pyproject.toml, lipcheck.toml
MAX_DIM = 2**31 - 1  # one tensor dimension (what a C int, and every runtime's index type, holds)
MAX_INPUT_ELEMENTS = 2**40  # elements of one model input (4 TiB of float32): a hard limit, past any machine;
# lipcheck.budget's lower, resource-based limit is the one --force lifts


class FileLimitError(LipcheckError):
    """A user-supplied file is not a regular file, is larger than lipcheck reads, or cannot be read."""


def read_limited(
    path: str | os.PathLike[str], max_bytes: int, *, what: str = "file", follow_symlinks: bool = True
) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises :class:`FileLimitError` naming ``what`` and the path when the path is not a regular file (a
    device such as ``/dev/zero``, a FIFO, a socket, a directory), when it holds more than ``max_bytes``
    (checked on the open file, and again while reading: a file that grows is cut off, not followed), or when
    it cannot be read. ``FileNotFoundError`` propagates as is, so that callers can give their own hint.
    The file is opened non-blocking: opening a FIFO with no writer returns at once instead of waiting. With
    ``follow_symlinks=False`` a symbolic link at ``path`` is refused (``O_NOFOLLOW``).
    """
    shown = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(shown, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileLimitError(f"cannot read {what} {shown}: {_reason(exc)}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileLimitError(f"cannot read {what} {shown}: {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileLimitError(
                f"{what} {shown} is {_size(info.st_size)}, more than the {_size(max_bytes)} lipcheck reads"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileLimitError(f"{what} {shown} is more than the {_size(max_bytes)} lipcheck reads")
        return b"".join(chunks)
    except OSError as exc:
        raise FileLimitError(f"cannot read {what} {shown}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def read_limited_text(path: str | os.PathLike[str], max_bytes: int, *, what: str = "file") -> str:
    """:func:`read_limited`, decoded as UTF-8 (a leading BOM is dropped); bad UTF-8 is a :class:`FileLimitError`."""
    data = read_limited(path, max_bytes, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileLimitError(
            f"cannot read {what} {os.fspath(path)}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})"
        ) from exc


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return exc.strerror if exc.errno != errno.EISDIR else "is a directory"
    return str(exc) or type(exc).__name__


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)'...: what a non-regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"
