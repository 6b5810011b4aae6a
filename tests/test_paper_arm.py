"""Question 1's protocol: the exact interval, Holm, the pooled bootstrap, the verdicts, and the paper arm
end to end at smoke scale (runs found by request, held-out files per arm, the sensitivity arms)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lossbook.core import stats
from lossbook.core.losses import RELEASED_FORMULAS, compile_formula, released_loss

REPO = Path(__file__).resolve().parent.parent


def _pairs(only_a: int, only_b: int, both: int, n: int):
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    return a, b


def test_the_exact_interval_excludes_zero_exactly_when_mcnemar_rejects():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        only_a, only_b = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        g = stats.exact_gain(*_pairs(only_a, only_b, 100, 1000))
        assert g.gain_pp == pytest.approx(100 * (only_a - only_b) / 1000)
        assert g.ci_low <= g.gain_pp <= g.ci_high
        excludes = g.ci_low > 0 or g.ci_high < 0
        assert excludes == (g.p_value < 0.05), (only_a, only_b, g)
        seen.add(excludes)
    assert seen == {True, False}
    # the grid's 'not reproduced' at 0 vs 2 discordant images is inconclusive under the protocol
    g = stats.exact_gain(*_pairs(0, 2, 0, 1000))
    assert g.p_value == 0.5 and stats.direction(g) == "inconclusive" and g.ci_high > 0
    assert stats.exact_gain(*_pairs(0, 0, 5, 1000)) == stats.ExactGain(0.0, 0.0, 0.0, 1.0, 0, 0, 1000)


def test_direction_and_size_verdicts():
    g = stats.ExactGain(2.0, 1.0, 3.0, 0.001, 30, 10, 1000)
    assert stats.direction(g) == "reproduced"
    assert [stats.size_verdict(g, p) for p in (2.9, 3.5, 0.5)] == [
        "consistent", "smaller than the paper's", "larger than the paper's"]
    assert stats.direction(replace(g, gain_pp=-2, ci_low=-3, ci_high=-1)) == "not reproduced"
    assert stats.direction(replace(g, ci_low=0.0)) == "inconclusive"


def test_holm_adjustment():
    # hand-computed: sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(.04, 3*.03), max(.09, 2*.04), max(.09, .5)
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # a partial family: the two hypotheses not tested yet count as the largest p-values
    assert stats.holm([0.01, 0.02], family_size=4) == pytest.approx([0.04, 0.06])
    assert stats.holm([0.01], family_size=1) == pytest.approx([0.01])
    with pytest.raises(ValueError, match="family_size 1 is smaller than the 2 p-values given"):
        stats.holm([0.01, 0.02], family_size=1)


def test_pooled_gain_interval():
    mean, lo, hi = stats.pooled_gain([(30, 10, 1000)] * 24)
    assert mean == pytest.approx(2.0) and lo < 2.0 < hi and hi - lo < 1.0
    mean, lo, hi = stats.pooled_gain([(30, 10, 1000), (10, 30, 1000)] * 12)
    assert mean == pytest.approx(0.0) and lo < -0.5 and hi > 0.5  # the settings disagree: a wide interval
    assert stats.pooled_gain([(0, 0, 100)] * 3) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="rows"):
        stats.pooled_gain([1, 2, 3])


def _reference(name: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The released losses with the released operations (protected by 1e-12, true division), written
    independently of the transcription into formulas."""
    sm = lambda x: torch.softmax(x, -1)  # noqa: E731
    mx = lambda x: x.max(-1, keepdim=True).values  # noqa: E731
    sq = lambda x: torch.sign(x) * torch.sqrt(x.abs())  # noqa: E731
    inv = lambda x: torch.sign(x) / (x.abs() + 1e-12)  # noqa: E731
    return {
        "bs1": lambda: torch.exp(10 * sm(p) / mx(sm(p))),
        "bs2": lambda: torch.exp(-mx(sm(p + 2 * sm(5 * p)))),
        "bs3": lambda: sm(-sm(torch.exp(p) * 2 * p)) * (sm(2 * p) + 2 * q),
        "bs4": lambda: (sm(sm(2 * p) - q + p) - q) ** 2,
        "bs5": lambda: torch.exp(-mx(sm(torch.exp(sm(torch.exp(p) + p) + 1) + p) + 1)),
        "bs6": lambda: inv((sm(sq(6 * p * p * p)) * (1 + q)).sum(-1, keepdim=True)),
    }[name]()


def test_released_losses_match_the_released_operations():
    g = torch.Generator().manual_seed(0)
    p = 3 * torch.randn(64, 10, generator=g, dtype=torch.float64).float()
    q = torch.nn.functional.one_hot(torch.randint(0, 10, (64,), generator=g), 10).float()
    for name in RELEASED_FORMULAS:
        assert torch.allclose(released_loss(name)(p, q), _reference(name, p, q), rtol=1e-4, atol=1e-6), name
    with pytest.raises(ValueError, match="constant 2 not allowed; allowed: 0, 1"):
        compile_formula(RELEASED_FORMULAS["bs2"])  # the search's own formulas keep Table I's constants
    with pytest.raises(ValueError, match="unknown released loss 'bs7'; allowed: bs1, bs2"):
        released_loss("bs7")


def test_uses_label():
    from lossbook.chapters.paper_arm import uses_label

    assert uses_label("Neg(Sum(Mul(q, Log(Softmax(p)))))") and not uses_label("Inv(Max(p))")
    # q read, but as a constant: the gradient that PGD follows is the same for every label
    assert not uses_label("Add(Max(p), q)") and not uses_label("Mul(Sum(q), Max(p))")
    assert uses_label("Add(Max(p), Neg(Sum(Mul(q, p))))")  # a margin: the label moves the gradient


@pytest.fixture(scope="module")
def smoke_arm(tmp_path_factory, data_available):
    """The smoke arm on one setting, with its seed-0 run made earlier by the 'smoke' preset (same request)."""
    from lossbook.chapters import paper_arm as A
    from lossbook.search.runs import search_setting

    root = tmp_path_factory.mktemp("arm")
    plan = replace(A.ARMS["smoke"], reuse=("smoke",))
    name = "mnist-net1-at-linf"
    A._ensure_smoke_model(name, plan, progress=False)
    setting = A.arm_setting(name, plan, root)
    earlier = search_setting(setting, "smoke", runs=1, seed=0, model_scale="smoke", root=root,
                             cfg=A._config(plan), progress=False)[0]
    row = A.judge_setting(name, plan, root, progress=False, log=lambda *a: None)
    A.arm_runs(name, plan, root, progress=False, log=lambda *a: None, seeded=True)
    return {"A": A, "plan": plan, "root": root, "name": name, "row": row, "earlier": earlier, "setting": setting}


def test_the_arm_counts_a_run_of_the_same_request_and_judges_on_held_out_images(smoke_arm):
    A, plan, root, row = smoke_arm["A"], smoke_arm["plan"], smoke_arm["root"], smoke_arm["row"]
    assert row["runs"] == 2 and row["run_seeds"] == "0 1" and row["runs_from_grid"] == 1
    assert not (root / plan.preset / smoke_arm["name"] / "run-0.json").exists()  # counted where it is, not copied
    assert (root / plan.preset / smoke_arm["name"] / "run-1.json").exists()
    assert row["eps"] == smoke_arm["setting"].eps and row["model_scale"] == "smoke"
    runs = A.arm_runs(smoke_arm["name"], plan, root, compute=False)
    best = A.best_run(runs)
    assert row["best_formula"] == best["best"] and row["insample_gain_pp"] == pytest.approx(best["gain_over_ce_pp"])
    assert row["direction"] in stats.DIRECTIONS and row["size"] in stats.SIZES
    assert row["only_searched"] - row["only_ce"] == pytest.approx(row["heldout_gain_pp"] * plan.heldout_images / 100)
    summary = A.load_summary(plan, root)
    assert summary.setting.tolist() == [smoke_arm["name"]]
    assert "holm_p" in A.with_holm(summary) and A.family(summary)["judged"] == 1
    # Holm runs over the arm's planned family, not over the one judged row
    assert summary.planned_settings.eq(len(A.arm_settings(plan.name))).all()
    assert A.with_holm(summary).holm_p.iloc[0] == pytest.approx(min(1.0, summary.p_value.iloc[0] * len(A.arm_settings(plan.name))))
    assert "1 of 24 settings judged" in A.answer(summary)


def test_a_run_for_another_eps_or_a_seeded_run_is_never_taken(smoke_arm):
    A, plan, root = smoke_arm["A"], smoke_arm["plan"], smoke_arm["root"]
    other = replace(smoke_arm["setting"], eps=smoke_arm["setting"].eps * 2)
    assert A.find_run(other, plan, 0, root=root) is None
    seeded = A.find_run(smoke_arm["setting"], plan, plan.seeded_seed, seeded=True, root=root)
    assert seeded is not None and seeded["gp"]["seed_losses"] == ["ce", "cw", "margin"]
    assert A.find_run(smoke_arm["setting"], plan, plan.seeded_seed, seeded=False, root=root) is None


def test_sensitivity_arms(smoke_arm):
    A, plan, root = smoke_arm["A"], smoke_arm["plan"], smoke_arm["root"]
    row = A.sensitivity_row(smoke_arm["name"], plan, root)
    # every run's tree scored again with one set of starts: one gain per run, the pick among the arm's seeds
    assert len(row["shared_starts_gains_pp"].split()) == 2 and row["shared_starts_seed"] in (0, 1)
    assert row["best_run_seed"] == A.best_run(A.arm_runs(smoke_arm["name"], plan, root, compute=False))["seed"]
    for label in ("textbook", "seeded", "shared", "fresh"):
        assert row[f"{label}_ci_low"] <= row[f"{label}_gain_pp"] <= row[f"{label}_ci_high"]
        assert row[f"{label}_direction"] in stats.DIRECTIONS
    assert {f"{k}_risk" for k in RELEASED_FORMULAS} <= set(row)
    assert 0 <= row["released_beating_ce"] + row["released_losing_to_ce"] <= len(RELEASED_FORMULAS)
    folder = root / plan.preset / smoke_arm["name"]
    assert {"heldout-smoke-arm.json", "heldout-seeded.json", "heldout-sensitivity.npz",
            "selection-shared-starts.json", "heldout-fresh-block.json"} <= {p.name for p in folder.iterdir()}
    # the fresh block: images after the search's and the held-out block's, none of them shared with either
    best = A.best_run(A.arm_runs(smoke_arm["name"], plan, root, compute=False))
    searched, ce, fresh_idx = A.fresh_block_outcomes(smoke_arm["name"], plan, best, root)
    held = A.heldout_outcomes(A.arm_setting(smoke_arm["name"], plan, root), plan.heldout_plan("mnist"), best, root,
                              tag=plan.preset)
    assert len(fresh_idx) == len(searched) == len(ce) == plan.heldout_images
    assert min(fresh_idx) > max(held["test_indices"])
    g = stats.exact_gain(searched, ce)
    assert row["fresh_gain_pp"] == pytest.approx(round(g.gain_pp, 2))
    import pandas as pd

    summary = A.load_summary(plan, root)
    sentence = A.fresh_block_sentence(summary, pd.DataFrame([row]))
    assert sentence.startswith(f" On a fresh block of {plan.heldout_images} images that nothing had used")
    assert A.fresh_block_sentence(summary, None) == ""


def test_the_long_at_arm_judges_only_the_cifar10_at_settings_on_the_30_epoch_models():
    from lossbook.chapters.paper_arm import ARMS, arm_settings, run_arm
    from lossbook.config import train_config

    assert arm_settings("long-at") == tuple(f"cifar10-{n}-at-{norm}" for n in ("net1", "net2") for norm in ("linf", "l1", "l2"))
    assert len(arm_settings("paper")) == 24 and ARMS["long-at"].seeded_seed is None
    assert train_config("cifar10", "net1", "at", ARMS["long-at"].scale_of("cifar10")).epochs == 30
    with pytest.raises(ValueError, match="unknown setting of arm long-at 'mnist-net1-at-linf'; allowed: 'cifar10-net1-at-linf'"):
        run_arm("long-at", settings=["mnist-net1-at-linf"])
    with pytest.raises(ValueError, match="unknown arm 'long'; allowed: 'paper', 'smoke', 'long-at'"):
        arm_settings("long")


def test_the_cli_offers_every_arm():
    from lossbook.__main__ import build_parser
    from lossbook.chapters.paper_arm import ARMS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["paper-arm"]
    assert next(a for a in sub._actions if a.dest == "arm").choices == tuple(ARMS)


def test_the_sensitivity_columns_do_not_wait_for_the_seeded_run(smoke_arm):
    """Textbook PGD and the released losses are computed for a judged setting whose seeded run is not done;
    the seeded columns say so."""
    import pandas as pd

    from lossbook.core.stats import NOT_RUN

    A, plan, root = smoke_arm["A"], smoke_arm["plan"], smoke_arm["root"]
    name = "mnist-net1-st-linf"
    A.judge_setting(name, plan, root, progress=False, log=lambda *a: None)
    row = A.sensitivity_row(name, plan, root)
    assert row["seeded_direction"] == NOT_RUN and row["seeded_gain_pp"] is None and row["seeded_formula"] is None
    assert row["textbook_direction"] in stats.DIRECTIONS and {f"{k}_risk" for k in RELEASED_FORMULAS} <= set(row)
    table = A.sensitivity_table(pd.DataFrame([row]))
    assert table["seeded run: gain over CE"].iloc[0] == NOT_RUN
    # a row saved before a column existed reads back as NaN beside a newer row: "not run", never "nan"
    old = {k: v for k, v in row.items() if not k.startswith("fresh_")}
    table = A.sensitivity_table(pd.DataFrame([old, row]))
    assert table["fresh block: gain over CE"].iloc[0] == NOT_RUN


def test_the_all_settings_sentence_reads_the_committed_arm_and_a_summary_without_power():
    """The committed arm gives a median power; a summary whose settings cannot hold the paper's gain (the smoke
    arm's few discordant images) says so instead of failing."""
    from lossbook.chapters.paper_arm import all_settings_sentence, load_summary

    summary = load_summary("paper")
    if summary is None:
        pytest.skip("the paper arm is not committed here")
    text = all_settings_sentence(summary)
    assert "median power of 0." in text and "settings reproduce" in text
    few = summary.head(2).assign(only_searched=0, only_ce=0)  # no discordant image: no gain possible
    text = all_settings_sentence(few)
    assert "No setting had enough discordant images" in text and "in 2 settings" in text and "is not supported" in text


def test_rows_whose_selected_run_predates_the_protocol_are_marked():
    import pandas as pd

    from lossbook.chapters.paper_arm import made_before_protocol

    s = pd.DataFrame({"runs_from_grid": [2, 2, 0, 2], "best_run_seed": [0, 3, 0, 1]})
    assert made_before_protocol(s).tolist() == [True, False, False, True]


def test_where_the_evidence_sits_is_counted_from_the_summary():
    import pandas as pd

    from lossbook.chapters import paper_arm as A

    base = {"model_scale": "cpu", "model_epochs": 4, "model_clean_acc": 0.56, "table_iii_eps": 0.024,
            "table_iii_ce_risk": 0.6, "runs_from_grid": 0, "best_run_seed": 3, "heldout_gain_pp": 3.0,
            "p_value": 1e-6, "p_value_pgd100": 1e-6, "heldout_gain_pp_pgd100": 3.0, "eps": 0.03}
    rows = [{**base, "setting": "cifar10-net1-at-linf", "insample_gain_pp": 3.5},
            {**base, "setting": "cifar10-net2-at-l1", "insample_gain_pp": 0.25, "runs_from_grid": 2, "best_run_seed": 1,
             "model_clean_acc": 0.59},
            {**base, "setting": "mnist-net1-st-l1", "insample_gain_pp": 0.0, "model_scale": "paper", "model_epochs": 160,
             "eps": 5.0, "table_iii_eps": 25.0, "table_iii_ce_risk": 1.0, "p_value": 0.5, "p_value_pgd100": 0.5,
             "heldout_gain_pp": 0.1, "direction": "inconclusive"}]
    s = pd.DataFrame(rows).assign(direction=lambda d: d.get("direction", "reproduced")).fillna({"direction": "reproduced"})
    text = A.where_the_evidence_sits(s.assign(search_images=400))
    assert "The 2 gains that survive Holm sit 2 on cifar10 cpu models of 4 epochs (56%-59% clean)." in text
    assert "Without the 1 rows whose selected run was searched before this protocol" in text
    assert "On MNIST the rule's eps is 0.20 to 0.20 times Table III's" in text
    assert "In 2 settings (cifar10-net2-at-l1, mnist-net1-st-l1) the selected run beats CE by at most one of its 400" in text
    # an arm with fewer search images (the smoke arm's) has a coarser "one image": 4 pp of 25 covers all three
    assert "In 3 settings (" in A.where_the_evidence_sits(s.assign(search_images=25))


def _at_rows(gains: list, epochs: int, clean: float):
    """A summary of the six CIFAR-10 AT settings: setting -> (held-out gain, p-value, direction)."""
    import pandas as pd

    from lossbook.chapters import paper_arm as A

    return pd.DataFrame([{"setting": n, "heldout_gain_pp": g, "p_value": p, "direction": d,
                          "heldout_gain_pp_pgd100": g, "p_value_pgd100": p, "direction_pgd100": d,
                          "ci_low": g - 1, "ci_high": g + 1, "model_epochs": epochs, "model_clean_acc": clean,
                          "model_scale": "cpu-long" if epochs == 30 else "cpu",
                          "table_iii_eps": 0.024, "table_iii_ce_risk": 0.6, "eps": 0.03}
                         for n, (g, p, d) in zip(A.arm_settings("long-at"), gains)])


def test_the_training_length_sentence_says_which_gains_survive_on_the_longer_trained_models():
    from lossbook.chapters import paper_arm as A

    no, gain = (0.2, 0.5, "inconclusive"), (3.0, 1e-6, "reproduced")
    paper = _at_rows([gain, gain, no, no, no, no], 4, 0.56)  # net1 linf and l1 gain here
    longer = _at_rows([gain, no, no, no, no, (2.0, 1e-5, "reproduced")], 30, 0.70)  # linf kept, l1 lost, net2 l2 new
    text = A.training_length_sentence(paper, longer)
    assert text == (" On CIFAR-10 AT models trained 30 epochs instead of 4 (the long-AT arm; 70% clean), the 6 AT "
                    "settings read 2 gains, 0 losses and 4 inconclusive; 1 of the 2 AT gains that survive Holm here "
                    "survive Holm there too (cifar10-net1-at-linf); only there: cifar10-net2-at-l2.")
    partial = A.training_length_sentence(paper, longer.iloc[:2])
    assert "the long-at arm has judged 2 of 6 settings: 1 gains, 0 losses, 1 inconclusive; until it has judged them, " \
           "the AT verdicts are provisional." in partial
    assert "is not run yet" in A.training_length_sentence(paper, None)
    # another arm's models (the smoke arm's) are not what the long-AT arm is read against
    assert A.training_length_sentence(paper.assign(model_scale="smoke"), longer) == ""


def test_the_training_length_table_sets_both_models_side_by_side():
    from lossbook.chapters import paper_arm as A
    from lossbook.core.stats import NOT_RUN

    gain = (3.0, 1e-6, "reproduced")
    t = A.training_length_table(_at_rows([gain] * 6, 4, 0.5), _at_rows([gain], 30, 0.75))
    assert len(t) == 6 and t["setting"].tolist() == list(A.arm_settings("long-at"))
    # PGD-10 accuracy at Table III's eps: clean accuracy times 1 - R'' (0.5 * 0.4 and 0.75 * 0.4)
    assert t["paper arm: model"].iloc[0] == "4 ep.: 50.0% clean, 20.0% PGD-10 at 0.024"
    assert t["long-AT arm: model"].iloc[0] == "30 ep.: 75.0% clean, 30.0% PGD-10 at 0.024"
    # Holm over the arm's own family: here its 1 judged row
    assert t["long-AT arm: held-out gain [95%] at eps"].iloc[0] == "+3.0 [+2.0, +4.0] at 0.03: reproduced (Holm p 1e-06)"
    assert (t["long-AT arm: model"].iloc[1:] == NOT_RUN).all()
