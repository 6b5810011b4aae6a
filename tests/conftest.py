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
    from lossbook.core import data

    x, y = data.load("mnist", "train", 3000)
    xt, yt = data.load("mnist", "test", 500)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def trained_mlp(mnist_small):
    """An MLP trained for a few seconds on 3,000 MNIST images (about 90% test accuracy)."""
    from lossbook.core.models import build_model

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


class DiskFull:
    """A file object whose disk fills at ``when``: before any byte ("write"), half-way ("partial"), or
    when the buffered bytes go to the disk ("flush"). Wrap what ``os.fdopen`` returns with it."""

    error = OSError(28, "No space left on device")  # errno.ENOSPC

    def __init__(self, fh, when: str = "write"):
        self.fh, self.when = fh, when

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.fh.close()

    def write(self, data):
        if self.when == "partial":
            self.fh.write(data[:len(data) // 2])
            self.fh.flush()
        if self.when != "flush":
            raise self.error
        return self.fh.write(data)

    def flush(self):
        raise self.error

    def fileno(self):
        return self.fh.fileno()


def fill_disk_at(monkeypatch, nth: int, when: str = "write") -> list:
    """Make the ``nth`` file that ``lossbook.store`` opens run out of space at ``when``; returns the
    call counter. ``monkeypatch.undo()`` or the test's end puts ``os.fdopen`` back."""
    from lossbook import store

    real, calls = store.os.fdopen, [0]

    def fdopen(fd, *a, **k):
        calls[0] += 1
        fh = real(fd, *a, **k)
        return DiskFull(fh, when) if calls[0] == nth else fh

    monkeypatch.setattr(store.os, "fdopen", fdopen)
    return calls
