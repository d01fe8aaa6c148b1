"""Composition methods: strategies that combine per-layer facts into one certified Lipschitz bound.

- ``lipsdp`` (:mod:`.lipsdp`): LipSDP-Neuron multipliers for MLP chains (Gemm/MatMul + slope-restricted
  activations), chosen by L-BFGS from ECLipsE-Fast's point, certified by a floating-point Cholesky (:mod:`.lmi`).
- :mod:`.chain` recognizes such chains in a lipcheck Graph.
"""

from __future__ import annotations

from lipcheck.bound.methods.base import MethodResult

__all__ = ["MethodResult"]
