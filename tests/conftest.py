"""Shared fixtures: the data folder (../shared/data unless LOSSBOOK_DATA says otherwise) and a small trained model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

if not os.environ.get("LOSSBOOK_DATA") and (SHARED_DATA / "mnist.npz").exists():
    os.environ["LOSSBOOK_DATA"] = str(SHARED_DATA)
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # small tensors: one thread is fastest and never oversubscribes


@pytest.fixture(scope="session")
def data_available() -> bool:
    folder = os.environ.get("LOSSBOOK_DATA")
    if not folder or not (Path(folder) / "mnist.npz").exists():
        pytest.skip("no local data folder: set LOSSBOOK_DATA (tests read ../shared/data by default)")
    return True


@pytest.fixture(scope="session")
def mnist_small(data_available):
    from lossbook import data

    x, y = data.load("mnist", "train", 3000)
    xt, yt = data.load("mnist", "test", 500)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def trained_mlp(mnist_small):
    """An MLP trained for a few seconds on 3,000 MNIST images (about 90% test accuracy)."""
    from lossbook.models import build_model

    x, y, _, _ = mnist_small
    torch.manual_seed(0)
    model = build_model("mnist", "mlp", hidden=[128])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(8):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            idx = perm[i:i + 100]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
