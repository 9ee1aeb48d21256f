"""Operator norms (upper Lipschitz constants) of conv and linear layers, the per-layer table of
Szegedy et al. (2014, section 4.3, Table 5) for a whole model, and a differentiable penalty.

Padding semantics (they matter: the circular norm at size n is NOT an upper bound for a
zero-padded layer; 5-point Laplacian, 'same' zero padding, n=9: 7.8042 zero-padded, 7.7588
circular):

* ``padding="circular"``: the exact norm of the circular layer on an ``input_size`` torus (which
  must be a multiple of the stride).
* an int, a pair, ``"same"`` or ``"valid"``: PyTorch's zero padding. The layer is a restriction of
  the circular layer on a torus of N >= n + total padding (rounded up to a multiple of the
  stride), whose norm is therefore a certified upper bound; ``conv_lower_bound`` (power iteration
  on the real operator) brackets it from below.

Results are float64 for float64 weights, float32 otherwise (float16/bfloat16 weights included).
``method="gram"`` (default) returns certified upper bounds: Gram iteration with rescaling
(Delattre et al. 2023), frequencies that cannot hold the maximum pruned, the computed value times
``1 + 16 sqrt(d) eps`` for rounding (d the smaller matrix side, eps the compute type's). Iteration
stops when the bound is within ``tol`` of a Rayleigh-quotient lower bound. ``method="exact"``:
eigenvalues per frequency (no certificate beyond LAPACK's accuracy). float32 matmuls run at full
precision inside the op whatever TF32 / oneDNN settings are active.

Modules: ``norms`` (operator norms of conv and linear layers: the op and its Python face),
``table`` (``lipschitz_table`` and the graph walk that fills it), ``rows`` (the table's rows and
rendering), ``tracing`` (torch.fx tracing and the recording forward), ``nodes`` (reading one fx
node), ``rules`` (activations, shape changes and other single-input layers), ``weighted`` (conv,
linear and BatchNorm layers inside the table), ``pooling`` (pooling bounds), ``penalty`` (the
differentiable penalty).
"""

# fft_size, layer_penalty, LayerBound and ACTIVATION_CONSTANTS: public, outside __all__ (noqa)
from robustkern.spectral.norms import (
    conv_lower_bound,
    conv_operator_norm,
    conv_singular_values,
    fft_size,  # noqa: F401
    linear_operator_norm,
)
from robustkern.spectral.penalty import layer_penalty, lipschitz_penalty  # noqa: F401
from robustkern.spectral.rows import LayerBound, LipschitzTable  # noqa: F401
from robustkern.spectral.rules import ACTIVATION_CONSTANTS  # noqa: F401
from robustkern.spectral.table import lipschitz_table

__all__ = [
    "LipschitzTable",
    "conv_lower_bound",
    "conv_operator_norm",
    "conv_singular_values",
    "linear_operator_norm",
    "lipschitz_penalty",
    "lipschitz_table",
]
