"""Every architecture of the book: NET-1/NET-2 (AutoLoss-AR Table II) and the ATRAS MLPs.

Convolutions use 'same' padding (k // 2), so the spatial size is only changed by MaxPool(2)
(floor division): MNIST 28 -> 14 -> 7 -> 3, CIFAR-10 32 -> 16 -> 8 -> 4 -> 2. Every pooling
listed in Table II therefore applies. Where Table II lists no "BN + ReLU" after a convolution
(the last one of both MNIST networks) there is none.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from lossbook.config import DATASETS, NETS, check_choice
from lossbook.core.data import SHAPES

# Table II as data: ("conv", kernel, channels, bn_relu) | ("pool",) | ("gap",)
TABLE_II = {
    ("mnist", "net1"): [("conv", 5, 4, True), ("pool",), ("conv", 5, 8, True), ("pool",),
                        ("conv", 5, 16, True), ("pool",), ("conv", 5, 32, False), ("gap",)],
    ("mnist", "net2"): [("conv", 3, 8, True), ("pool",), ("conv", 3, 16, True), ("pool",),
                        ("conv", 3, 32, True), ("pool",), ("conv", 3, 64, False), ("gap",)],
    ("cifar10", "net1"): [("conv", 3, 16, True), ("pool",), ("conv", 3, 16, True), ("pool",),
                          ("conv", 3, 32, True), ("pool",), ("conv", 3, 64, True), ("pool",),
                          ("conv", 3, 128, True), ("gap",)],
    ("cifar10", "net2"): [("conv", 3, 16, True), ("pool",), ("conv", 3, 16, True), ("pool",),
                          ("conv", 3, 32, True), ("pool",), ("conv", 3, 32, True), ("pool",),
                          ("conv", 3, 64, True), ("conv", 3, 128, True), ("gap",)],
}


def conv_net(layers: Sequence[tuple], in_channels: int, n_classes: int = 10) -> nn.Sequential:
    """Build a Table-II style network from its layer list."""
    mods: list[nn.Module] = []
    c = in_channels
    for layer in layers:
        if layer[0] == "conv":
            _, k, out, bn_relu = layer
            mods.append(nn.Conv2d(c, out, k, padding=k // 2, bias=not bn_relu))
            if bn_relu:
                mods += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        elif layer[0] == "pool":
            mods.append(nn.MaxPool2d(2))
        elif layer[0] == "gap":
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        else:
            raise ValueError(f"unknown layer {layer!r}")
    mods.append(nn.Linear(c, n_classes))
    return nn.Sequential(*mods)


def mlp(in_features: int, hidden: Sequence[int], n_classes: int = 10, activation: str = "relu",
        batchnorm: bool = False) -> nn.Sequential:
    """An MLP on flattened input with the given hidden widths (the ATRAS architectures)."""
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    check_choice("activation", activation, acts)
    if not hidden or any(int(h) <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(hidden)}")
    mods: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        mods.append(nn.Linear(width, int(h)))
        if batchnorm:
            mods.append(nn.BatchNorm1d(int(h)))
        mods.append(acts[activation]())
        width = int(h)
    mods.append(nn.Linear(width, n_classes))
    return nn.Sequential(*mods)


def build_model(dataset: str, name: str, **kwargs) -> nn.Module:
    """Build a model by name: ``"net1"``/``"net2"`` (Table II) or ``"mlp"`` (``hidden=[...]``)."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("model name", name, NETS + ("mlp",))
    shape = SHAPES[dataset]
    if name == "mlp":
        if "hidden" not in kwargs:
            raise ValueError("build_model(dataset, 'mlp', hidden=[...]) needs the hidden-layer widths")
        return mlp(shape[0] * shape[1] * shape[2], kwargs.pop("hidden"), **kwargs)
    if kwargs:
        raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
    return conv_net(TABLE_II[(dataset, name)], in_channels=shape[0])


def describe_layers(layers) -> str:
    """Table II's notation for a layer list: ``Conv(in, out) BN ReLU → MP(2) → ... → FC(10)``."""
    parts = []
    for layer in layers:
        if layer[0] == "conv":
            parts.append(f"Conv({layer[1]}, {layer[2]})" + (" BN ReLU" if layer[3] else ""))
        else:
            parts.append({"pool": "MP(2)", "gap": "GAP"}[layer[0]])
    return " → ".join(parts + ["FC(10)"])


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def default_device() -> torch.device:
    """CUDA when available, CPU otherwise (one code path for both)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode for the block; restore each one's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Predicted labels of ``model`` in eval mode, computed on the model's device, returned on x's device."""
    dev = model_device(model)
    with eval_mode(model):
        out = torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    return out.to(x.device)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Clean accuracy of ``model`` (eval mode) on (x, y)."""
    return float(predict(model, x, batch_size).eq(y).float().mean())
