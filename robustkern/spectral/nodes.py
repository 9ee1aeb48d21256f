"""Reading one node of a traced graph: the operation's name whatever its spelling (F.relu,
torch.relu, Tensor.relu_, aten.relu), shape queries, arguments by position or keyword, the row's
name, and ``_Unbounded``, the exception a rule raises for a node it cannot bound."""

from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import fx


class _Unbounded(Exception):
    """A node robustkern cannot bound; the message says why (it becomes the row's note)."""


# outputs that depend on the input's shape only (fixed here), not on its values
_SHAPE_QUERIES = frozenset({
    "size", "dim", "numel", "nelement", "ndimension", "get_device", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand_like", "randn_like", "new_zeros", "new_ones", "new_empty",
    "new_full",
})  # fmt: skip
_NAMESPACES = (torch, F, operator, builtins)  # where the functions _op_name names live
_SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout"})
# spellings of one operation: in-place forms, aliases
_ALIASES = {
    "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv", "div": "truediv",
    "true_divide": "truediv", "multiply": "mul", "subtract": "sub", "concat": "cat",
    "concatenate": "cat", "clip": "clamp", "negative": "neg", "dropout1d": "dropout",
    "dropout2d": "dropout", "dropout3d": "dropout",
}  # fmt: skip


def _op_name(node: fx.Node) -> str:
    """One name per operation whatever its spelling: 'relu' for F.relu, torch.relu and
    Tensor.relu_ and aten.relu, 'add' for a + b, a += b and torch.add; '' for a module or an
    unknown callable."""
    if node.op == "call_method":
        name = node.target
    elif isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten":
        name = node.target.overloadpacket.__name__  # torch.export's graphs: the same arguments
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if not any(getattr(space, name, None) is node.target for space in _NAMESPACES):
            return ""  # a user's function that happens to share a name
    else:
        return ""
    name = name.rstrip("_") if not name.startswith("_") else name
    return _ALIASES.get(name, name)


def _is_shape_query(node: fx.Node) -> bool:
    name = _op_name(node)
    if name == "getattr":
        return node.args[1] in _SHAPE_ATTRIBUTES
    return name in _SHAPE_QUERIES


def _arg(node: fx.Node, index: int, name: str, default=None):
    """An argument by position (the input counts as 0) or by keyword."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _row_name(node: fx.Node) -> str:
    """A layer's qualified name; for a function, the module whose forward calls it and the
    node's name ('layer1.0.add')."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    scope = list(stack.values())[-1][0] if stack else ""
    return f"{scope}.{node.name}" if scope else node.name
