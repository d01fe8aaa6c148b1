"""Helpers for constant arrays too big to copy: read-only ``np.memmap`` views over a model's external data.

The ONNX loader maps every externally stored tensor read-only (``np.memmap`` mode ``"r"``) instead of reading
it into memory, so the IR's constants may be file mappings. These helpers walk such arrays in bounded chunks
(no full-size temporaries) and hand the mapped pages back once a layer is done with them: file pages a
process has touched count in its resident set until it unmaps them, so without :func:`release_pages` a
model's weights would all end up resident one after the other.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

CHUNK_BYTES = 32 * 2**20  # bytes of float64 (or of the source dtype) handled at a time by the chunked helpers


def _read_only_mapping(array: object) -> mmap.mmap | None:
    """The ``mmap`` under ``array`` (a view of a view of ... an ``np.memmap`` opened with mode ``"r"``), else None."""
    base = array
    for _ in range(64):  # view chains are short; the bound only guards against a cycle
        if base is None:
            return None
        if isinstance(base, np.memmap):
            mm = getattr(base, "_mmap", None)
            return mm if getattr(base, "mode", None) == "r" and isinstance(mm, mmap.mmap) else None
        base = getattr(base, "base", None)
    return None


def is_file_mapped(array: object) -> bool:
    """True when ``array`` is (a view of) a read-only ``np.memmap``: its data lives in a file, not in memory."""
    return _read_only_mapping(array) is not None


def release_pages(array: object) -> None:
    """Drop this process's resident pages of the read-only file mapping under ``array`` (no-op otherwise).

    Only a hint on memory: the array stays valid and its data the same (a read-only shared mapping has no
    private pages; the next access reads them again from the page cache or the file). Never applied to
    writable or copy-on-write mappings, where it could discard data.
    """
    mm = _read_only_mapping(array)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed mapping, or a platform that refuses the hint
        pass


def leading_chunks(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Views ``array[i:j]`` along the first axis of about ``chunk_bytes`` each (at least one index each)."""
    if array.ndim == 0:
        yield array.reshape(1)
        return
    per_index = array.itemsize * (array.size // array.shape[0] if array.shape[0] else 0)
    step = max(1, chunk_bytes // max(1, per_index))
    for start in range(0, array.shape[0], step):
        yield array[start:start + step]


def nonfinite_kind(array: np.ndarray) -> str | None:
    """``"NaN"`` or ``"Inf"`` when a floating-point ``array`` holds such a value (NaN reported first), else None.

    Checked chunk by chunk: the temporaries never exceed :data:`CHUNK_BYTES`-sized pieces of the array.
    """
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return None
    if a.flags.c_contiguous or a.flags.f_contiguous:
        a = a.reshape(-1, order="C" if a.flags.c_contiguous else "F")  # a view of the flat data
    found_inf = False
    for chunk in leading_chunks(a):
        finite = np.isfinite(chunk)
        if finite.all():
            continue
        if np.isnan(chunk).any():
            return "NaN"
        found_inf = True
    return "Inf" if found_inf else None
