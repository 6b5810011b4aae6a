import numpy as np
import pytest
import torch

from lossbook.core import data


def test_mnist_shapes_range_and_label_counts(data_available):
    x, y = data.load("mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    xtr, ytr = data.load("mnist", "train")
    assert xtr.shape == (60000, 1, 28, 28)
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(float(xtr.mean()) - 0.1307) < 1e-3


def test_cifar10_shapes_channels_and_counts(data_available):
    x, y = data.load("cifar10", "train")
    assert x.shape == (50000, 3, 32, 32) and y.shape == (50000,)
    assert torch.bincount(y).tolist() == [5000] * 10
    means = x.mean(dim=(0, 2, 3)).tolist()
    assert means == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3)
    xt, yt = data.load("cifar10", "test", n=10)
    assert xt.shape == (10, 3, 32, 32) and yt.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_missing_folder_names_setting_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBOOK_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match=r"LOSSBOOK_DATA=.*cifar10-train-1\.npz.*cifar10-test\.npz"):
        data.load("cifar10", "test")
    with pytest.raises(data.DataError, match="not a folder"):
        monkeypatch.setenv("LOSSBOOK_DATA", str(tmp_path / "nope"))
        data.load("mnist")


def test_malformed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSBOOK_DATA", str(tmp_path))
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match=r"lacks arrays \['y_test'\]"):
        data.load("mnist", "test")
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((3, 27, 28), np.uint8), y_test=np.zeros(3, np.uint8))
    with pytest.raises(data.DataError, match=r"expected uint8 images of shape N x 28 x 28"):
        data.load("mnist", "test")
    # a trailing channel axis passed the check before and failed later in conv2d
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((3, 28, 28, 1), np.uint8), y_test=np.zeros(3, np.uint8))
    data._load_uint8.cache_clear()
    with pytest.raises(data.DataError, match=r"holds x \(3, 28, 28, 1\) uint8 .* expected uint8 images of shape N x 28 x 28"):
        data.load("mnist", "test")
    (tmp_path / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="cannot read"):
        data.load("mnist", "test")


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown split 'val'; allowed: 'train', 'test'"):
        data.load("mnist", "val")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; allowed: 'mnist', 'cifar10'"):
        data.load("svhn")


def test_qmnist_unavailable_gives_a_clear_message(tmp_path, monkeypatch):
    # a dead local proxy makes the download fail at once, with or without internet
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("LOSSBOOK_DOWNLOAD", str(tmp_path))
    with pytest.raises(data.DataError, match=r"QMNIST's extended test set \(test50k\) is not available.*needs internet"):
        data.load_qmnist_extended()
