"""Real models from PyPI wheels (tests/realmodels.py): the audit found four speech-model files certified 0.0
because their If branches read the input from the enclosing scope. None may be certified below what onnxruntime
exhibits; those with input-dependent control flow or Sqrt/Pow front ends are unbounded with the node named.
Also silero-vad v4 (faster-whisper 0.10.1: Sqrt/Log front end, ONNX LSTM ops) and the PP-OCRv4 text recogniser
(rapidocr-onnxruntime 1.4.4: SVTR attention), each on a stated region."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import lipcheck
from tests.realmodels import RAPIDOCR, SILERO, SILERO_V4, Unavailable, model_path

SHAPES = {"input": (1, 512), "state": (2, 1, 128)}


@pytest.mark.parametrize("name", sorted(SILERO.files))
def test_speech_model_with_control_flow_is_never_certified_zero(name: str) -> None:
    try:
        path = model_path(SILERO, name)
    except (Unavailable, OSError) as exc:
        pytest.skip(f"silero-vad not available: {exc}")
    report = lipcheck.analyze(path, input_shape=SHAPES, lower_bound=False)
    # the model's output does move with its input: no certificate may say 0 (or anything below what it shows)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: i for i in sess.get_inputs()}
    rng = np.random.default_rng(0)

    def run(x: np.ndarray) -> np.ndarray:
        values = {"input": x, "state": np.zeros(SHAPES["state"], np.float32)}
        if "sr" in feeds:
            values["sr"] = np.array(16000, np.int64)
        return np.concatenate([np.asarray(o, np.float64).ravel() for o in sess.run(None, values)])

    x = rng.standard_normal(SHAPES["input"]).astype(np.float32) * 0.1
    y = x + rng.standard_normal(SHAPES["input"]).astype(np.float32) * 0.01
    ratio = float(np.linalg.norm(run(x) - run(y)) / np.linalg.norm(x.astype(np.float64) - y))
    assert ratio > 0
    if report.certified:
        assert report.upper_bound >= ratio
    else:
        assert report.unbounded and all(u.node and u.reason for u in report.unbounded)


def test_speech_model_with_a_pinned_sample_rate_gets_a_finite_local_bound() -> None:
    """--domain sr=16000,16000 folds the sample-rate If; on a box the LSTM gates get local constants and the STFT
    magnitude √(re² + im²) is a ReduceL2 (1-Lipschitz): the local bound is finite, and at least the in-region lower
    bound."""
    try:
        path = model_path(SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx")
    except (Unavailable, OSError) as exc:
        pytest.skip(f"silero-vad not available: {exc}")
    report = lipcheck.analyze(path, input_shape=SHAPES, lower_bound=False, exact_limit=0,
                              domain="input=-1,1;state=-1,1;sr=16000,16000")
    assert not any(u.op == "If" for u in report.unbounded)  # folded: the branch is analysed
    local = report.local
    assert local is not None and local.certified and local.upper_bound is not None and not local.unbounded
    if local.lower_bound is not None:
        assert local.lower_bound <= local.upper_bound
    gates = [c for c in local.changed if c["op"] == "Mul" and c["global"] is None]
    # σ(·)·tanh(·): both factors in [-1, 1], widened by the float32 rounding the ranges allow for
    assert gates and all(c["local"] <= 1.001 for c in gates)


# --------------------------------------------------------------------------------------------------------------------
# silero-vad v4 (faster-whisper 0.10.1): an STFT magnitude front end (Pow, Sqrt, Log) and two ONNX LSTM ops

V4_SHAPES = {"input": (1, 512), "h": (2, 1, 64), "c": (2, 1, 64)}
V4_NAME = "faster_whisper/assets/silero_vad.onnx"


def _silero_v4():
    try:
        return model_path(SILERO_V4, V4_NAME)
    except (Unavailable, OSError) as exc:
        pytest.skip(f"faster-whisper 0.10.1 not available: {exc}")


def test_lstm_speech_model_with_a_log_front_end_gets_a_finite_local_bound() -> None:
    """Globally the sample-rate If (its condition reads the integer input) keeps the bound unbounded; with sr pinned
    the branch is analysed on audio in [-1, 1] and LSTM states h, c in [-1, 1]: the squares get local constants, and
    what stays unbounded is named, the STFT magnitude's Sqrt (its range reaches 0) and both LSTM ops (no rule)."""
    path = _silero_v4()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def run(x: np.ndarray) -> np.ndarray:
        values = {"input": x, "sr": np.array(16000, np.int64),
                  "h": np.zeros(V4_SHAPES["h"], np.float32), "c": np.zeros(V4_SHAPES["c"], np.float32)}
        return np.concatenate([np.asarray(o, np.float64).ravel() for o in sess.run(None, values)])

    x = rng.uniform(-0.5, 0.5, V4_SHAPES["input"]).astype(np.float32)
    y = x + rng.standard_normal(V4_SHAPES["input"]).astype(np.float32) * 0.01
    assert np.linalg.norm(run(x) - run(y)) > 0  # the output does move with the input: nothing may certify 0

    report = lipcheck.analyze(path, input_shape=V4_SHAPES, lower_bound=False, exact_limit=0)
    assert not report.certified
    assert [u.op for u in report.unbounded] == ["If"] and "control flow" in report.unbounded[0].reason

    report = lipcheck.analyze(path, input_shape=V4_SHAPES, lower_bound=False, exact_limit=0,
                              domain="input=-1,1;h=-1,1;c=-1,1;sr=16000,16000")
    assert not any(u.op == "If" for u in report.unbounded)  # folded: the 16 kHz branch is analysed
    local = report.local
    # a finite certified local bound: the STFT magnitude √(re² + im²) is a ReduceL2 (1-Lipschitz), the two LSTM ops
    # are bounded from their gates and the range of the initial cell state, Log(1 + 2^20·|X|) from its input ≥ 1
    assert local is not None and local.certified and local.upper_bound is not None and not local.unbounded
    assert 1.0 < local.upper_bound < 1e30
    lstms = [c for c in local.changed if c["op"] == "LSTM"]
    assert len(lstms) == 2 and all(1.0 < c["local"] < 100.0 for c in lstms)
    # globally the Log (no global constant) and the LSTMs (their initial cell state is an input) stay unbounded
    assert {u.op for u in report.unbounded} == {"Log", "LSTM"}
    logs = [c for c in local.changed if c["op"] == "Log"]
    assert len(logs) == 1 and 1.0 <= logs[0]["local"] < 1.001


# --------------------------------------------------------------------------------------------------------------------
# PP-OCRv4 text recogniser (rapidocr-onnxruntime 1.4.4): conv backbone + SVTR attention blocks

REC_NAME = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
REC_SHAPE = (1, 3, 48, 320)  # rapidocr's crop: height 48, width ≥ 320, pixels (v/255 − 0.5)/0.5 in [-1, 1]


@pytest.mark.slow
def test_attention_ocr_model_gets_a_local_bound_or_a_named_node() -> None:
    """On text-line crops in [-1, 1], a finite local bound must be at least what onnxruntime shows inside the box;
    otherwise the bound is unbounded with each responsible node and its reason named."""
    try:
        path = model_path(RAPIDOCR, REC_NAME)
    except (Unavailable, OSError) as exc:
        pytest.skip(f"rapidocr-onnxruntime 1.4.4 not available: {exc}")
    report = lipcheck.analyze(path, input_shape=REC_SHAPE, lower_bound=False, exact_limit=0, domain="-1,1")
    assert not report.certified  # attention (MatMul of two input-dependent tensors): no global constant
    assert any(u.op == "MatMul" for u in report.unbounded)
    # its shape arithmetic (Shape → Slice → Concat → Reshape, opset 12) folds: no Shape, Cast or Reshape stays
    assert not any(u.op in ("Shape", "Cast", "Reshape") for u in report.unbounded), report.unbounded
    local = report.local
    assert local is not None
    if local.upper_bound is not None:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        x = rng.uniform(-0.9, 0.9, REC_SHAPE).astype(np.float32)
        y = x + rng.uniform(-0.05, 0.05, REC_SHAPE).astype(np.float32)
        fx, fy = (np.asarray(sess.run(None, {"x": v})[0], np.float64) for v in (x, y))
        assert local.upper_bound >= float(np.linalg.norm(fx - fy) / np.linalg.norm(x.astype(np.float64) - y))
    else:
        assert local.unbounded and all(u.node and u.op and u.reason for u in local.unbounded)
