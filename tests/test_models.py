import pytest
import torch

from lossbook.core.models import TABLE_II, build_model, n_params


def _conv(cin, cout, k, bn):  # weights, bias only without BN, BN's gamma and beta
    return cout * cin * k * k + (2 * cout if bn else cout)


# Parameter counts written out layer by layer from Table II ('same' padding does not change them).
EXPECTED = {
    ("mnist", "net1"): _conv(1, 4, 5, 1) + _conv(4, 8, 5, 1) + _conv(8, 16, 5, 1) + _conv(16, 32, 5, 0) + 32 * 10 + 10,
    ("mnist", "net2"): _conv(1, 8, 3, 1) + _conv(8, 16, 3, 1) + _conv(16, 32, 3, 1) + _conv(32, 64, 3, 0) + 64 * 10 + 10,
    ("cifar10", "net1"): _conv(3, 16, 3, 1) + _conv(16, 16, 3, 1) + _conv(16, 32, 3, 1) + _conv(32, 64, 3, 1)
    + _conv(64, 128, 3, 1) + 128 * 10 + 10,
    ("cifar10", "net2"): _conv(3, 16, 3, 1) + _conv(16, 16, 3, 1) + _conv(16, 32, 3, 1) + _conv(32, 32, 3, 1)
    + _conv(32, 64, 3, 1) + _conv(64, 128, 3, 1) + 128 * 10 + 10,
}


@pytest.mark.parametrize("dataset,net", sorted(EXPECTED))
def test_table_ii_shapes_and_parameter_counts(dataset, net):
    model = build_model(dataset, net).eval()
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    assert model(torch.rand(5, *shape)).shape == (5, 10)
    assert n_params(model) == EXPECTED[(dataset, net)]
    n_pool = sum(layer[0] == "pool" for layer in TABLE_II[(dataset, net)])
    assert n_pool == (3 if dataset == "mnist" else 4)


def test_spatial_sizes_with_same_padding():
    model = build_model("cifar10", "net1").eval()
    sizes = []
    h = torch.rand(1, 3, 32, 32)
    for m in model:
        h = m(h)
        if isinstance(m, torch.nn.MaxPool2d):
            sizes.append(h.shape[-1])
    assert sizes == [16, 8, 4, 2]


def test_mlp_widths_and_errors():
    model = build_model("cifar10", "mlp", hidden=[40, 160, 640])
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3072, 40), (40, 160), (160, 640), (640, 10)]
    with pytest.raises(ValueError, match="hidden-layer widths"):
        build_model("mnist", "mlp")
    with pytest.raises(ValueError, match="unknown model name 'net3'.*'net1', 'net2', 'mlp'"):
        build_model("mnist", "net3")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        build_model("svhn", "net1")


def test_eval_mode_restores_every_submodule():
    from lossbook.core.attacks import fgsm, pgd
    from lossbook.core.models import eval_mode

    model = build_model("mnist", "net1").train()
    model[1].eval()  # one BatchNorm already in eval mode: it must stay so
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    stats = model[1].running_mean.clone()
    pgd(model, x, y, eps=0.1, steps=2)
    fgsm(model, x, y, eps=0.1)
    assert [m.training for m in model.modules()] == before
    assert torch.equal(model[1].running_mean, stats)  # attacks ran in eval mode: no statistics updated
