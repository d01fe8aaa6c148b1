"""Real models from PyPI wheels (tests/realmodels.py): the audit found four speech-model files certified 0.0
because their If branches read the input from the enclosing scope. None may be certified below what onnxruntime
exhibits; those with input-dependent control flow or Sqrt/Pow front ends are unbounded with the node named."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import lipcheck
from tests.realmodels import SILERO, Unavailable, model_path

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


def test_speech_model_with_a_pinned_sample_rate_gets_a_named_local_reason() -> None:
    """--domain sr=16000,16000 folds the sample-rate If; on a box the LSTM gates get local constants and what stays
    unbounded is the STFT magnitude's Sqrt, whose range reaches 0 (its derivative is unbounded there)."""
    try:
        path = model_path(SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx")
    except (Unavailable, OSError) as exc:
        pytest.skip(f"silero-vad not available: {exc}")
    report = lipcheck.analyze(path, input_shape=SHAPES, lower_bound=False, exact_limit=0,
                              domain="input=-1,1;state=-1,1;sr=16000,16000")
    assert not any(u.op == "If" for u in report.unbounded)  # folded: the branch is analysed
    local = report.local
    assert local is not None and local.upper_bound is None
    assert local.unbounded[0].op == "Sqrt" and "range" in local.unbounded[0].reason
    gates = [c for c in local.changed if c["op"] == "Mul" and c["global"] is None]
    # σ(·)·tanh(·): both factors in [-1, 1], widened by the float32 rounding the ranges allow for
    assert gates and all(c["local"] <= 1.001 for c in gates)
