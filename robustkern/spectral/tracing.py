"""Running the model for the table and the penalty: torch.fx tracing (nn layers and
``robustkern.nn.Normalize`` kept whole), one recording forward of the traced graph that keeps each
node's shape and input-independent values, and each submodule's input shape from an eager
forward on zeros."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import fx, nn

from robustkern import nn as rk_nn
from robustkern.modes import eval_mode


class _Untraceable(Exception):
    """torch.fx could not trace the model, or the traced graph does not run."""


class _Tracer(fx.Tracer):
    """Keeps torch.nn layers (the default) and robustkern's Normalize whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, rk_nn.Normalize) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> tuple[nn.Module, fx.Graph]:
    """(the module the graph's targets name, the graph of its forward)."""
    tracer = _Tracer()
    root = model
    if tracer.is_leaf_module(model, ""):  # tracing a layer itself would open up its forward
        root = nn.Sequential(OrderedDict([("(model)", model)]))
    try:
        return root, tracer.trace(root)
    except Exception as e:  # the user's forward ran on proxies: any failure means "untraceable"
        raise _Untraceable(
            f"torch.fx cannot trace {type(model).__name__}.forward ({type(e).__name__}: "
            f"{_first_line(e)})"
        ) from e


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps each node's output shape, and the output itself where
    it cannot depend on the input's values (parameters, buffers, shape arithmetic): the constants
    that multiply, divide or weight the input."""

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        super().__init__(root, graph=graph)
        self.input = next(iter(graph.nodes), None)  # the first placeholder
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.values: dict[fx.Node, object] = {}
        self.varies: set[fx.Node] = set()

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        if n is self.input or any(a in self.varies for a in n.all_input_nodes):
            self.varies.add(n)
        if n not in self.varies or not _holds_tensor(out):
            self.values[n] = out
        return out


def _holds_tensor(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def _run_once(root: nn.Module, graph: fx.Graph, model: nn.Module, input_shape: tuple) -> _Recorder:
    recorder = _Recorder(root, graph)
    try:
        with torch.no_grad():
            recorder.run(_probe(model, input_shape))
    except Exception as e:  # the shape, or a graph that differs from the eager forward
        raise _Untraceable(
            f"the traced forward of {type(model).__name__} does not run ({type(e).__name__}: "
            f"{_first_line(e)})"
        ) from e
    return recorder


def _probe(model: nn.Module, input_shape: tuple) -> torch.Tensor:
    """A batch of one zero input on the model's device, in its floating dtype."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    p = next((t for t in tensors if t.is_floating_point()), None)
    if p is None:
        return torch.zeros(1, *input_shape)
    return torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """Each submodule's input shape (without batch), from one forward on zeros in eval mode."""
    shapes: dict[nn.Module, tuple] = {}

    def record(module, args):
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with eval_mode(model), torch.no_grad():
            try:
                model(_probe(model, input_shape))
            except RuntimeError as e:
                raise ValueError(
                    f"input_shape {input_shape} (one sample, e.g. (C, H, W)) does not fit the "
                    f"model: {e}"
                ) from e
    finally:
        for h in hooks:
            h.remove()
    return shapes
