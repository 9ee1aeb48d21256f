"""Certified lower bounds beside the attacks' upper bounds.

``bounds``, ``margin_bounds`` and ``verified``: interval (IBP) and backward linear (CROWN,
CROWN-IBP) bound propagation over an L-inf or L2 ball intersected with the input box
(``verified(method="lipschitz")``: the Lipschitz-margin certificate). ``lipschitz_*`` and
``certified_curve``: Lipschitz-margin radii; ``smoothing``: randomised smoothing.

Modules: ``propagation`` (the entry points), ``graph`` (the traced model as affine maps, ReLUs
and sums; the error naming an unsupported layer), ``layers`` (the affine maps), ``inputs`` (the
input set and the minimum of a linear function over it), ``interval`` (IBP), ``linear`` (CROWN's
backward pass), ``lipschitz`` and ``smoothing``.
"""

from robustkern.certify.graph import UnsupportedLayerError
from robustkern.certify.lipschitz import (
    certified_curve,
    lipschitz_bound,
    lipschitz_radius,
    lipschitz_verified,
)
from robustkern.certify.propagation import bounds, margin_bounds, verified
from robustkern.certify.smoothing import smoothed_predict, smoothing

__all__ = [
    "UnsupportedLayerError",
    "bounds",
    "certified_curve",
    "lipschitz_bound",
    "lipschitz_radius",
    "lipschitz_verified",
    "margin_bounds",
    "smoothed_predict",
    "smoothing",
    "verified",
]
