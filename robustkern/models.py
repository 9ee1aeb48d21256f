"""Small built-in models for demos, tests and benchmarks. All return logits.

* ``fc``: fully connected nets as in Szegedy et al. (sigmoid hidden units, softmax output
  applied by the loss); ``hidden=()`` is their plain softmax classifier.
* ``small_cnn``: two conv stages and a small head; works for any input size >= 4x4.
* ``cert_cnn``: strided convolutions and ReLUs only (no max-pool, no BatchNorm), the kind of
  model bound propagation certifies and certified training (IBP, CROWN-IBP) trains.
* ``resnet``: CIFAR-style ResNet of basic blocks; ``small_resnet`` and ``resnet18`` are presets.

Users' own models come in through ``from_spec("module:factory", weights)`` or, as whole
models, ``load_model_file`` (TorchScript or torch.export).
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def fc(
    in_features: int,
    num_classes: int = 10,
    hidden: Sequence[int] = (100, 100),
    activation: str = "sigmoid",
) -> nn.Sequential:
    """Fully connected classifier on flattened inputs (Szegedy et al.'s FC100-100-10 default)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """conv3x3(w)-relu-pool, conv3x3(2w)-relu-pool, 4x4 adaptive pool, fc(128), fc(classes)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )  # fmt: skip


def cert_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    width: int = 16,
    hidden: int = 100,
) -> nn.Sequential:
    """conv4x4(w, stride 2)-relu, conv4x4(2w, stride 2)-relu, fc(hidden)-relu, fc(classes):
    CROWN-IBP's 2-layer CNN (Zhang et al. 2020; close to Gowal et al.'s "small"), certifiable
    by ``robustkern.certify`` (max-pool has no bound rule; BatchNorm would need batch statistics
    in training). image_size: the inputs' height and width in pixels (>= 4), which fixes the
    first fully connected layer's size; the 28 default is MNIST's."""
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    side = image_size // 4  # each 4x4 convolution of stride 2 and padding 1 halves it (floor)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )  # fmt: skip


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet(
    in_channels: int = 3,
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (1, 1, 1),
) -> nn.Sequential:
    """CIFAR-style ResNet: 3x3 stem, stages of basic blocks (stride 2 from the second stage)."""
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"widths and blocks must have equal, nonzero length: {widths}, {blocks}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c = widths[0]
    for stage, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(n):
            layers.append(BasicBlock(c, w, 2 if stage > 0 and b == 0 else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def small_resnet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return resnet(in_channels, num_classes, widths=(16, 32, 64), blocks=(1, 1, 1))


def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 shape (64-128-256-512, two blocks each), CIFAR-style stem."""
    return resnet(in_channels, num_classes, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")  # where training code nests it
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
SHOWN_KEYS = 5  # how many keys an error lists of each kind


def load_weights(path: str | Path, *, trust_pickle: bool = False):
    """A state dict (or, with ``trust_pickle``, whatever the file holds) from ``path``.

    Files load with ``torch.load(weights_only=True)``. A file that needs pickle (arbitrary code
    on load) is refused unless ``trust_pickle`` is set; a missing or corrupt file is an error
    that names it. Checkpoints as training code saves them are unwrapped: the state dict may
    sit under ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` (beside ``"epoch"``,
    ``"optimizer"`` and the like), and a ``module.`` (DataParallel/DDP) or ``_orig_mod.``
    (torch.compile) prefix that every key carries is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a pickled object: a damaged file
            raise ValueError(f"weights file {path} is corrupt or not a torch file: {e}") from None
        if not trust_pickle:
            raise PermissionError(
                f"weights file {path} needs pickle to load, which can run arbitrary code; "
                "pass --trust-pickle (trust_pickle=True) only if you trust its source"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"weights file {path} is corrupt or not a torch file: {e}") from None
    obj = _unwrap_checkpoint(obj)
    return _strip_wrapper_prefixes(obj) if isinstance(obj, dict) else obj


def _unwrap_checkpoint(obj):
    """The state dict (or pickled module) inside a training checkpoint, such as
    ``{"epoch": 3, "optimizer": {...}, "model_state_dict": {...}}``; anything else as it is."""
    for _ in range(3):  # a wrapper inside a wrapper, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            return obj
        inner = next(
            (obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None
        )
        if inner is None:
            return obj
        obj = inner
    return obj


def _strip_wrapper_prefixes(state: dict) -> dict:
    """``state`` without a ``module.`` / ``_orig_mod.`` prefix that every key carries (as many
    layers as there are: torch.compile of a DDP model saves ``_orig_mod.module.``)."""
    while state and all(isinstance(k, str) for k in state):
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = type(state)((k[len(prefix) :], v) for k, v in state.items())
    return state


def from_spec(
    spec: str,
    weights: str | Path | None = None,
    *,
    kwargs: dict | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """Build ``module:factory(**kwargs)`` and load ``weights`` (a state dict, or a checkpoint
    holding one; see ``load_weights``) into it. Weights that do not fit are a ValueError naming
    the missing and unexpected keys and the shape mismatches."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model must be given as module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cannot find model factory {spec!r}: {e}. The module is imported like any Python "
            f"module: run from the directory that holds {module_name.split('.')[0]}.py (or its "
            f"package), or add that directory to PYTHONPATH (the current directory is "
            f"{Path.cwd()})"
        ) from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        public = sorted(k for k, v in vars(module).items() if callable(v) and k[0] != "_")
        raise ValueError(
            f"cannot find model factory {spec!r}: {module_name} has no {attr!r}; its callables "
            f"are {public[:12]}"
        ) from None
    try:
        model = factory(**(kwargs or {}))
    except TypeError as e:  # wrong or missing keyword arguments
        raise ValueError(f"cannot build {spec} with arguments {kwargs or {}}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_state(model, _state_dict_in(weights, trust_pickle), f"weights file {weights}", spec)
    return model


def _state_dict_in(weights: str | Path, trust_pickle: bool) -> dict:
    state = load_weights(weights, trust_pickle=trust_pickle)
    if isinstance(state, nn.Module):
        state = _strip_wrapper_prefixes(state.state_dict())
    if not isinstance(state, dict):
        raise ValueError(f"weights file {weights} holds {type(state).__name__}, not a state dict")
    if state and not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"weights file {weights} holds a dict without tensors (keys {_listed(state)}), not a "
            f"state dict; a checkpoint must nest it under one of {list(CHECKPOINT_KEYS)}"
        )
    return state


def _load_state(model: nn.Module, state: dict, what: str, spec: str) -> None:
    """``model.load_state_dict(state)``, failing with the keys that do not fit instead of
    torch's full listing. On failure the model is left partly loaded: callers discard it."""
    own = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    }
    fitting = {k: v for k, v in state.items() if k not in mismatched}
    try:
        # strict=False lets each module excuse keys it can rebuild (BatchNorm's
        # num_batches_tracked in old files), which a plain comparison of key sets would not.
        result = model.load_state_dict(fitting, strict=False)
    except RuntimeError as e:  # a module's own loading hook refused its entries
        raise ValueError(f"{what} does not fit {spec}: {e}") from None
    missing = [k for k in result.missing_keys if k not in mismatched]
    unexpected = list(result.unexpected_keys)
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}")
    if mismatched:
        shapes = [f"{k}: file {f} vs model {m}" for k, (f, m) in mismatched.items()]
        problems.append(f"{len(shapes)} shape mismatch(es) {_listed(shapes)}")
    hint = _prefix_hint(list(state), list(own))
    raise ValueError(f"{what} does not fit {spec}: {'; '.join(problems)}{hint}")


def _listed(items) -> str:
    """The first few of ``items``, and how many more there are."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:SHOWN_KEYS])
    more = f", ... {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    return f"[{shown}{more}]"


def _prefix_hint(file_keys: list[str], model_keys: list[str]) -> str:
    """A hint when the keys would fit after removing a prefix from the file's keys, or after
    adding one (a model saved from inside a wrapper, or saved bare and loaded into one)."""
    prefix = _common_extra_prefix(file_keys, model_keys)
    if prefix:
        return (
            f"; hint: the file's keys fit after removing the prefix {prefix!r} from each; save "
            f"{{k.removeprefix({prefix!r}): v for k, v in state.items()}} to a new file"
        )
    prefix = _common_extra_prefix(model_keys, file_keys)
    if prefix:
        return (
            f"; hint: the file's keys fit after adding the prefix {prefix!r} to each "
            "(the model wraps the network the file was saved from)"
        )
    return ""


def _common_extra_prefix(longer: list[str], shorter: list[str]) -> str | None:
    """A dotted prefix ``p`` such that ``{p + k for k in shorter} == set(longer)``, or None."""
    if not longer or not shorter or not all(isinstance(k, str) for k in longer):
        return None
    parts = longer[0].split(".")
    target = set(shorter)
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n]) + "."
        if (
            all(k.startswith(prefix) for k in longer)
            and {k[len(prefix) :] for k in longer} == target
        ):
            return prefix
    return None


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module. An exported graph was traced in one mode and
    has no train/eval switch, so mode changes only set the flag here."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def load_model_file(path: str | Path) -> nn.Module:
    """A whole model from a file: a ``torch.export`` program (``.pt2``, exported with a dynamic
    batch dimension) or a TorchScript archive (anything else). Both carry the model's code:
    load files from sources you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        if path.suffix == ".pt2":
            return ExportedModel(torch.export.load(path).module())
        return torch.jit.load(path, map_location="cpu")
    except Exception as e:  # each format fails in its own way on a wrong or damaged file
        kind = "torch.export (.pt2)" if path.suffix == ".pt2" else "TorchScript"
        raise ValueError(f"model file {path} is not a readable {kind} file: {e}") from None
