"""MNIST and CIFAR-10 as float tensors in [0, 1], from a local folder or torchvision's downloaders.

Where the data comes from is one setting, the environment variable ``LOSSBOOK_DATA``:

* set  -> a folder holding ``mnist.npz`` (x_train, y_train, x_test, y_test; uint8) and
  ``cifar10-train-{1..5}.npz`` / ``cifar10-test.npz`` (x: N x 32 x 32 x 3 uint8 HWC, y: N);
* unset -> torchvision downloads the official files into ``LOSSBOOK_DOWNLOAD`` (default
  ``~/.cache/lossbook``).

Images come back as ``float32`` tensors of shape (N, C, H, W) in [0, 1] (no mean/std
normalisation: any normalisation belongs to the model), labels as ``int64``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torchvision

from lossbook.config import DATASETS, SHAPES, check_choice

ENV_VAR = "LOSSBOOK_DATA"
DOWNLOAD_ENV_VAR = "LOSSBOOK_DOWNLOAD"
SPLITS = ("train", "test")
LOCAL_FILES = {
    "mnist": ("mnist.npz",),
    "cifar10": tuple(f"cifar10-train-{k}.npz" for k in range(1, 6)) + ("cifar10-test.npz",),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(RuntimeError):
    """A data file is missing or does not hold what lossbook expects."""


def data_dir() -> Path | None:
    """The local data folder named by ``LOSSBOOK_DATA``, or None to use torchvision downloads."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _expected(dataset: str) -> str:
    return ", ".join(LOCAL_FILES[dataset])


def _npz_arrays(folder: Path, filename: str, names: tuple, dataset: str) -> dict:
    path = folder / filename
    if not path.is_file():
        raise DataError(
            f"{dataset}: file {path} not found. {ENV_VAR}={folder} must name a folder holding "
            f"{_expected(dataset)}; unset {ENV_VAR} to download with torchvision instead."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in names if n not in npz.files]
            if missing:
                raise DataError(
                    f"{dataset}: {path} lacks arrays {missing} (has {npz.files}); expected arrays {list(names)}"
                    f" in the files {_expected(dataset)} of the folder named by {ENV_VAR}."
                )
            return {n: npz[n] for n in names}
    except DataError:
        raise
    except Exception as exc:  # zip/format errors of a damaged file
        raise DataError(f"{dataset}: cannot read {path} ({exc}); set {ENV_VAR} to a folder with "
                        f"{_expected(dataset)}") from exc


def _check(dataset: str, x: np.ndarray, y: np.ndarray, source: str) -> None:
    c, h, w = SHAPES[dataset]
    shape = (h, w) if dataset == "mnist" else (h, w, c)  # as stored: N x 28 x 28, N x 32 x 32 x 3
    if x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y) or tuple(x.shape[1:]) != shape:
        raise DataError(
            f"{dataset}: {source} holds x {x.shape} {x.dtype} and y {y.shape}; expected uint8 images "
            f"of shape N x {' x '.join(map(str, shape))} and one label per image"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{dataset}: {source} has labels outside 0..9")


def _load_local(dataset: str, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise DataError(f"{ENV_VAR}={folder} is not a folder; it must hold {_expected(dataset)}")
    if dataset == "mnist":
        arr = _npz_arrays(folder, "mnist.npz", (f"x_{split}", f"y_{split}"), dataset)
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
    else:
        files = LOCAL_FILES["cifar10"][:5] if split == "train" else LOCAL_FILES["cifar10"][5:]
        parts = [_npz_arrays(folder, f, ("x", "y"), dataset) for f in files]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
    _check(dataset, x, y, str(folder))
    return x, y


def _load_torchvision(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(os.environ.get(DOWNLOAD_ENV_VAR, "~/.cache/lossbook")).expanduser()
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[dataset]
    try:
        ds = cls(root=str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise DataError(
            f"{dataset}: torchvision could not download to {root} ({exc}). Without internet, set "
            f"{ENV_VAR} to a folder holding {_expected(dataset)}."
        ) from exc
    x = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
    y = np.asarray(ds.targets)
    _check(dataset, x, y, f"torchvision's {dataset} in {root}")
    return x, y


@functools.lru_cache(maxsize=8)
def _load_uint8(dataset: str, split: str, folder: str | None) -> tuple[np.ndarray, np.ndarray]:
    if folder is not None:
        return _load_local(dataset, split, Path(folder))
    return _load_torchvision(dataset, split)


def load(dataset: str, split: str = "test", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] and labels int64 of ``dataset``'s ``split``.

    ``n`` keeps the first ``n`` examples (the official order), ``None`` keeps all.
    """
    check_choice("dataset", dataset, DATASETS)
    check_choice("split", split, SPLITS)
    folder = data_dir()
    x, y = _load_uint8(dataset, split, str(folder) if folder else None)
    if n is not None:
        if n <= 0:
            raise ValueError(f"n must be a positive number of examples or None, got {n}")
        x, y = x[:n], y[:n]
    xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    xt = xt.unsqueeze(1) if dataset == "mnist" else xt.permute(0, 3, 1, 2).contiguous()
    return xt, torch.from_numpy(y.astype(np.int64))


def load_qmnist_extended(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """QMNIST's 50k extended test set (the AutoLoss-AR paper's "extended data").

    Uses ``torchvision.datasets.QMNIST(what="test50k")``; files already downloaded under
    ``LOSSBOOK_DOWNLOAD`` are used offline. Raises :class:`DataError` with a clear message where
    the data cannot be had (for example without internet).
    """
    root = Path(os.environ.get(DOWNLOAD_ENV_VAR, "~/.cache/lossbook")).expanduser()
    try:
        ds = torchvision.datasets.QMNIST(root=str(root), what="test50k", download=True, compat=True)
    except Exception as exc:
        raise DataError(
            "QMNIST's extended test set (test50k) is not available: torchvision could not download it "
            f"to {root} ({type(exc).__name__}). It needs internet once; afterwards it is read from there."
        ) from exc
    x = ds.data[:n] if n else ds.data
    y = ds.targets[:n] if n else ds.targets
    return x.float().div(255.0).unsqueeze(1), torch.as_tensor(y, dtype=torch.int64)
