"""Typed errors. The CLI catches :class:`LipcheckError` once and prints one line (exit code 2)."""

from __future__ import annotations


class LipcheckError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class LoadError(LipcheckError):
    """The model file is missing, unreadable, corrupt, or not a model lipcheck can load."""


class InvalidModelError(LoadError):
    """The model file parses but contradicts itself: tensor data that does not match its shape, an unknown
    element type, a dimension no tensor can have, a Conv ``group`` that does not fit its weight."""


class InputShapeError(LipcheckError):
    """An input shape is dynamic and no ``--input-shape`` fixes it, or the given shape is wrong."""


class UnsupportedModelError(LipcheckError):
    """The model has no Lipschitz constant lipcheck can speak of (e.g. only integer inputs)."""


class InvalidWeightsError(LipcheckError):
    """A weight tensor holds NaN or Inf values."""


class UsageError(LipcheckError):
    """An option's value is malformed (e.g. ``--arch-kwargs`` that is not a JSON object)."""


class GateFailure(LipcheckError):
    """lipcheck ran, and the model failed a requirement (a normalize target, a gate): exit code 1."""


class MissingExtraError(LipcheckError):
    """An optional dependency is not installed (e.g. matplotlib for ``--plot``: ``pip install 'lipcheck[plot]'``)."""
