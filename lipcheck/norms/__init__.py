"""Pure numerics: arrays in, :class:`~lipcheck.report.model.NormResult` out. No graph or ONNX knowledge.

Every result carries an estimate (``sigma_power``, power iteration, from below), an exact value
(``sigma_exact``, float64 SVD / Lanczos, or ``None`` with the reason) and a certified upper bound
(``sigma_upper``, rounding margin included; :mod:`lipcheck.norms.margin`).

- :mod:`lipcheck.norms.matrix`: :func:`matrix_norms`, :func:`batched_matrix_norms` (Gemm, MatMul).
- :mod:`lipcheck.norms.conv`: :class:`ConvGeometry`, :func:`conv_norms`, :func:`conv_transpose_norms`,
  :func:`reshaped_kernel_norm`.
- :mod:`lipcheck.norms.pool`: :func:`average_pool_norms`, :func:`global_average_pool_norm`.
- :mod:`lipcheck.norms.power`: matrix-free power iteration and Lanczos.

Import the submodules directly (``from lipcheck.norms.conv import conv_norms``): ``conv`` imports torch.
"""

from __future__ import annotations
