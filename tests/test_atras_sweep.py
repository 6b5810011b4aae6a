import pandas as pd
import pytest
import torch

from lossbook.chapters import atras_sweep as atras
from lossbook.core.models import build_model


def test_the_40_architectures_are_the_papers_and_build_with_their_widths():
    assert len(atras.ARCHITECTURES) == 40 and len({str(a) for a in atras.ARCHITECTURES}) == 40
    paper = atras.paper_tables()
    for ds in ("mnist", "cifar10"):
        assert paper[paper["dataset"] == ds]["hidden"].tolist() == [str(a) for a in atras.ARCHITECTURES]
    for hidden in atras.ARCHITECTURES:
        for ds, d_in in (("mnist", 784), ("cifar10", 3072)):
            linears = [m for m in build_model(ds, "mlp", hidden=hidden) if isinstance(m, torch.nn.Linear)]
            assert [m.out_features for m in linears] == hidden + [10]
            assert [m.in_features for m in linears] == [d_in] + hidden


def test_fgsm_on_a_trained_mlp(trained_mlp, mnist_small):
    _, _, xt, yt = mnist_small
    clean = atras._acc(trained_mlp, xt, yt)
    attacked = atras.fgsm_accuracy(trained_mlp, xt, yt, eps=0.1)
    assert clean > 0.8 and attacked < clean - 0.3
    from lossbook.core.attacks import fgsm
    xa = fgsm(trained_mlp, xt, yt, 0.1)
    assert (xa - xt).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1


def test_one_architecture_pipeline_at_smoke_scale(tmp_path, data_available):
    cfg = atras.atras_config("mnist", "smoke", n_train=2000, n_test=300, epochs=4)
    df, tm = atras.dataset_results(cfg, [[40], [8, 128]], [[40], [8, 128]], compute=True, root=tmp_path,
                                   n_transfer=300, progress=False)
    assert list(df["hidden"]) == ["[40]", "[8, 128]"]
    assert set(atras.COLUMNS) <= set(df.columns) and df[atras.COLUMNS].apply(lambda c: c.between(0, 1).all()).all()
    assert (df["test_acc"] > 0.6).all()  # it learned something
    assert tm.shape == (2, 2) and list(tm.index) == ["[40]", "[8, 128]"]
    # resuming: nothing is recomputed, the saved rows come back; another configuration is refused
    again, _ = atras.dataset_results(cfg, [[40], [8, 128]], [], compute=False, root=tmp_path)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False)
    with pytest.raises(ValueError, match=r"mnist.csv: made for another request \(eps=0.1 \(asked 0.2\)\)"):
        atras.run_sweep(atras.with_overrides(cfg, eps=0.2), [[40]], root=tmp_path, progress=False)


def test_depth_summary_on_a_hand_made_table():
    df = pd.DataFrame({
        "dataset": ["mnist"] * 5,
        "hidden": ["[8]", "[16]", "[8, 16]", "[8, 16, 32]", "[8, 16, 32, 64, 128]"],
        "acc_attacked_before_at": [0.5, 0.6, 0.7, 0.2, 0.9],
        "acc_attacked_after_at": [0.6, 0.8, 0.6, 0.5, 0.9],
    })
    s = atras.depth_summary(df).set_index("depth_group")
    assert s.loc["1", "mean"] == pytest.approx(15.0) and s.loc["1", "count"] == 2
    assert s.loc["2", "mean"] == pytest.approx(-10.0)
    assert s.loc["3", "mean"] == pytest.approx(30.0)
    assert s.loc[">3", "mean"] == pytest.approx(0.0)
    assert s.loc["2", "paper_pp"] == -2.5


def test_bad_configuration_values():
    with pytest.raises(ValueError, match="unknown failure_mode 'relu-adam'"):
        atras.atras_config("mnist", "cpu", failure_mode="relu-adam")
    with pytest.raises(ValueError, match=r"eps=3 under linf is not allowed for inputs in \[0, 1\]\^784; allowed: 0 < eps <= 1"):
        atras.atras_config("mnist", "cpu", eps=3)


def test_claims_are_tested_on_a_hand_made_table():
    import pandas as pd

    from lossbook.chapters import atras_sweep as atras

    # smaller networks recover more and end more robust; attacks from small to large drop accuracy by 50 pp
    rows = [("[8]", 6370, 0.1, 0.9), ("[64]", 50890, 0.1, 0.7), ("[8, 16]", 6634, 0.1, 0.85), ("[64, 128]", 59850, 0.1, 0.6)]
    df = pd.DataFrame([{"dataset": "mnist", "hidden": h, "params": p, "test_acc": 0.95, "acc_attacked_before_at": b,
                        "acc_attacked_after_at": a} for h, p, b, a in rows])
    tm = pd.DataFrame([[0.1, 0.45], [0.9, 0.1]], index=["[8]", "[64]"], columns=["[8]", "[64]"])
    c = atras.claims(df, {"mnist": tm}).set_index("claim")
    assert c["supported"].tolist() == [True, True, True]
    assert "largest mean recovery at depth 1 (+70.0 pp)" in c.iloc[0]["evidence"]  # depth 2: +62.5 pp
    assert "Spearman(params, recovery) = -" in c.iloc[0]["evidence"]
    # the opposite table (larger networks recover more) is not supported
    flipped = df.assign(acc_attacked_after_at=df["acc_attacked_after_at"].values[::-1])
    assert not atras.claims(flipped)["supported"].any()
    assert "50.0 pp over 1 (smaller, larger) pairs" in c.iloc[2]["evidence"] and "larger to smaller: 5.0 pp" in c.iloc[2]["evidence"]


def test_conclusion_counts_the_supported_claims():
    import pandas as pd

    table = pd.DataFrame({"dataset": ["mnist", "mnist", "cifar10"], "claim": ["a", "b", "a"],
                          "evidence": ["", "", ""], "supported": [True, False, True]})
    text = atras.conclusion(table, "FGSM misses 9 pp")
    assert text.splitlines() == ["* mnist, earlier sweep (descriptive): 1 of 2 conclusions supported; not supported: b.",
                                 "* cifar10, earlier sweep (descriptive): 1 of 1 conclusions supported.", "* FGSM misses 9 pp"]


def test_chapter_configs_keep_the_scale_default_where_a_parameter_is_zero():
    base = atras.atras_config("mnist", "cpu")
    got = atras.chapter_configs(["mnist", "cifar10"], "cpu", eps=0.2, seed=3)
    assert set(got) == {"mnist", "cifar10"} and got["mnist"].eps == 0.2 and got["mnist"].seed == 3
    assert got["mnist"].epochs == base.epochs and got["mnist"].adv_epochs == base.adv_epochs


def test_the_takeaway_names_the_regime_beside_the_papers():
    import pandas as pd

    paper = atras.paper_tables()
    ours = paper.assign(test_acc=0.5, acc_attacked_before_at=0.1)  # a stand-in sweep with other accuracies
    configs = {ds: atras.atras_config(ds, "cpu") for ds in ("mnist", "cifar10")}
    answer, differs = atras.takeaway(ours, {}, paper, configs)
    assert answer.count("of the paper's conclusions supported") == 2 and "(descriptive: no interval)" in answer
    assert "mnist: FGSM eps 0.1" in differs and "under FGSM before adversarial training 10% (paper 93%)" in differs
    assert atras.takeaway(pd.DataFrame(), {}, paper, configs)[0] == "No sweep is available at this scale."


def test_the_regime_gap_is_measured_against_the_papers_tables():
    """A claim is judged only where our clean accuracy and accuracy under FGSM before AT are both within
    REGIME_TOLERANCE_PP of the paper's medians (else "not comparable")."""
    import pandas as pd

    from lossbook.chapters import atras_sweep as A

    paper = pd.DataFrame({"dataset": ["mnist"] * 3, "test_acc": [0.96, 0.97, 0.98], "acc_attacked_before_at": [0.9, 0.93, 0.95]})
    ours = pd.DataFrame({"dataset": ["mnist"] * 2, "test_acc": [0.95, 0.97], "acc_attacked_before_at": [0.1, 0.12]})
    gaps = A.regime_gaps_pp(ours, paper, "mnist")
    assert gaps["test_acc"] == pytest.approx(-1.0) and gaps["acc_attacked_before_at"] == pytest.approx(-82.0)
    assert max(map(abs, gaps.values())) > A.REGIME_TOLERANCE_PP
