"""robustkern: fused kernels and a thin Python layer for testing and improving robustness."""

import torch  # noqa: F401  (loads libtorch before our extension links against it)

from robustkern import _C, ops
from robustkern.evaluation import Evaluation, evaluate

__version__ = "0.1.0"
__all__ = ["Evaluation", "__version__", "compiled_with_cuda", "evaluate", "ops"]


def compiled_with_cuda() -> bool:
    """True when the CUDA kernels were built (torch is a CUDA build and nvcc was found)."""
    return _C.compiled_with_cuda()
