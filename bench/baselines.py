"""The libraries the benchmarks compare against, each optional (rows skip when it is missing):
torchattacks and ART install with ``pip install --no-deps``, Foolbox with its dependencies."""

import importlib.util

import torch

HAS_TA = importlib.util.find_spec("torchattacks") is not None
HAS_FB = importlib.util.find_spec("foolbox") is not None
HAS_ART = importlib.util.find_spec("art") is not None


def art_classifier(model, x: torch.Tensor, num_classes: int = 10, optimizer=None):
    """ART's PyTorchClassifier around ``model`` for inputs shaped like ``x`` in [0, 1]; ART's
    attacks take and return numpy arrays and its trainers need the optimizer."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        optimizer=optimizer,
        device_type="gpu" if x.is_cuda else "cpu",
    )
