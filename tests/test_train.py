import pytest
import torch
import torch.nn.functional as F

from lossbook.chapters.training import training_logs
from lossbook.config import paper_eps, train_config
from lossbook.core.models import build_model
from lossbook.core.train import _adversarial_batch, load_model, load_record, train


@pytest.mark.parametrize("training,drop", [("st", 0.3), ("at", 0.1)])
def test_a_few_training_steps_lower_the_loss(mnist_small, training, drop):
    x, y, _, _ = mnist_small
    cfg = train_config("mnist", "net1", training, "smoke", lr=0.05)
    torch.manual_seed(0)
    model = build_model("mnist", "net1")
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(0)
    xb, yb = x[:256], y[:256]
    losses = []
    for _ in range(15):
        model.train()
        inp = _adversarial_batch(model, xb, yb, cfg, gen) if training == "at" else xb
        loss = F.cross_entropy(model(inp), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - drop


def test_adversarial_batch_respects_eps_and_box(mnist_small):
    x, y, _, _ = mnist_small
    cfg = train_config("mnist", "net1", "at", "smoke")
    model = build_model("mnist", "net1")
    xa = _adversarial_batch(model, x[:64], y[:64], cfg, torch.Generator().manual_seed(0))
    assert (xa - x[:64]).abs().max() <= cfg.at_eps + 1e-6
    assert xa.min() >= 0 and xa.max() <= 1
    assert model.training  # back in train mode for the update


def test_checkpoint_round_trip_and_resume(tmp_path, data_available):
    cfg = train_config("mnist", "net1", "st", "smoke", epochs=2, milestones=(1,))
    # interrupted after one epoch, then resumed ...
    assert train(cfg, root=tmp_path, progress=False, stop_after_epochs=1) == {"interrupted_at_epoch": 1}
    assert (tmp_path / "smoke" / "mnist-net1-st.last.pt").exists()
    resumed = train(cfg, root=tmp_path / ".", progress=False)
    m_resumed = load_model("mnist", "net1", "st", "smoke", root=tmp_path, device=torch.device("cpu"))
    # ... equals an uninterrupted run with the same seed
    other = tmp_path / "b"
    straight = train(cfg, root=other, progress=False)
    m_straight = load_model("mnist", "net1", "st", "smoke", root=other, device=torch.device("cpu"))
    for a, b in zip(m_resumed.state_dict().values(), m_straight.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed["test_acc"] == straight["test_acc"]
    rec = load_record("mnist", "net1", "st", "smoke", root=tmp_path)
    assert rec["config"] == cfg.to_dict() and not (tmp_path / "smoke" / "mnist-net1-st.last.pt").exists()
    log = (tmp_path / "smoke" / "mnist-net1-st.log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,train_loss,train_acc,test_acc") and len(log) == 3


def test_missing_model_and_bad_parameters(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lossbook train --dataset mnist --net net2"):
        load_model("mnist", "net2", "at", "cpu", root=tmp_path)
    with pytest.raises(ValueError, match="unknown training 'pgd'; allowed: 'st', 'at'"):
        train_config("mnist", "net1", "pgd", "cpu")
    with pytest.raises(ValueError, match="unknown scale 'huge'; allowed: 'smoke', 'cpu', 'paper'"):
        train_config("mnist", "net1", "st", "huge")
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        paper_eps("mnist", "net1", "st", "l3")


def test_paper_settings_tables():
    assert paper_eps("mnist", "net2", "at", "linf") == 0.24
    assert paper_eps("cifar10", "net2", "st", "l2") == 0.18
    cfg = train_config("cifar10", "net1", "at", "paper")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones, cfg.at_eps, cfg.at_steps) == (160, 512, 0.01, (80, 120), 0.01, 7)


def test_a_finished_model_is_not_trained_again(tmp_path, data_available):
    from lossbook.config import train_config

    cfg = train_config("mnist", "net1", "st", "smoke")
    first = train(cfg, root=tmp_path, progress=False)
    path = tmp_path / "smoke" / "mnist-net1-st.pt"
    stamp = path.stat().st_mtime_ns
    again = train(cfg, root=tmp_path, progress=False)
    assert again["skipped"] and again["test_acc"] == first["test_acc"] and path.stat().st_mtime_ns == stamp
    # another seed has its own file; the seed-0 model is untouched
    other = train(train_config("mnist", "net1", "st", "smoke", seed=1), root=tmp_path, progress=False)
    assert (tmp_path / "smoke" / "mnist-net1-st-seed1.pt").exists() and path.stat().st_mtime_ns == stamp
    assert other["config"]["seed"] == 1
    # other settings at the same place: stop and say what differs
    with pytest.raises(ValueError, match=r"mnist-net1-st.pt holds a model trained with other settings \(epochs=1"):
        train(train_config("mnist", "net1", "st", "smoke", epochs=2), root=tmp_path, progress=False)
    path.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="mnist-net1-st.pt: unreadable checkpoint"):
        train(cfg, root=tmp_path, progress=False)


def test_conclusion_states_what_adversarial_training_cost():
    from lossbook.chapters.training import conclusion

    rec = lambda ds, net, tr, acc: {"config": {"dataset": ds, "net": net, "training": tr, "scale": "cpu"},
                                    "test_acc": acc, "train_seconds": 600}
    text = conclusion([rec("mnist", "net1", "st", 0.987), rec("mnist", "net1", "at", 0.974),
                       rec("cifar10", "net2", "at", 0.56)])  # no ST model: no comparison invented
    assert "mnist NET1: AT reaches 97.4% clean test accuracy, 1.3 pp below ST's 98.7%." in text
    assert "cifar10" not in text and "3 models, 30 minutes of training in all at `cpu` scale" in text


def test_a_seed_reaches_the_checkpoint_the_record_and_the_logs(tmp_path, data_available, monkeypatch):
    """A second seed trains its own model once; a second call loads it (the seed used to be dropped
    between ensure_trained and load_record, so the call stopped on the seed-0 file)."""
    import lossbook.core.train as T

    first = T.ensure_trained(["mnist"], ["net1"], ["st"], "smoke", seed=1, root=tmp_path, progress=False)
    assert first[0]["config"]["seed"] == 1 and not (tmp_path / "smoke" / "mnist-net1-st.pt").exists()
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a finished seed-1 model was trained again"))
    again = T.ensure_trained(["mnist"], ["net1"], ["st"], "smoke", seed=1, root=tmp_path, progress=False)
    assert again[0]["config"] == first[0]["config"]
    logs = training_logs(again, root=tmp_path)
    assert len(logs) == first[0]["config"]["epochs"] and set(logs.model) == {"mnist-net1-st"}
    table = T.store.load(tmp_path / "smoke" / "accuracies.csv")
    assert table.seed.tolist() == [1]


def test_the_takeaway_lists_each_models_accuracy():
    from lossbook.chapters.training import takeaway

    recs = [{"config": {"dataset": "mnist", "net": "net1", "training": "at", "epochs": 6}, "test_acc": 0.9738}]
    assert takeaway(recs) == "Clean test accuracy: mnist NET1 AT 97.4% after 6 epochs."
    assert takeaway([]) == "No model is available at this scale."


def test_the_long_scale_trains_only_the_cifar10_at_models_and_says_so():
    cfg = train_config("cifar10", "net2", "at", "cpu-long")
    assert (cfg.epochs, cfg.milestones, cfg.lr) == (30, (15, 22), 0.05)
    with pytest.raises(ValueError, match=r"scale 'cpu-long' trains only: cifar10 at \(asked: mnist st\)"):
        train_config("mnist", "net1", "st", "cpu-long")
    with pytest.raises(ValueError, match="unknown scale 'cpu-longer'; allowed: 'smoke', 'cpu', 'paper', 'cpu-long'"):
        train_config("cifar10", "net1", "at", "cpu-longer")
