"""ATRAS in its own regime (lossbook.chapters.atras_regime, book/protocol_atras.md)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lossbook.chapters import atras_regime as R
from lossbook.config import REPO_ROOT
from lossbook.core.stats import PENDING


def test_the_calibration_targets_are_the_papers_medians_and_the_protocol_states_them():
    assert (R.paper_target_pp("mnist"), R.paper_target_pp("cifar10")) == (3.1, 34.6)
    page = (REPO_ROOT / "book" / "protocol_atras.md").read_text()
    assert "3.1 pp on MNIST (35 networks), 34.6 pp on CIFAR-10 (31\n  networks)" in page



def test_the_papers_depth_groups_reproduce_its_text_where_its_tables_allow():
    """Depth 1 and 3 give the paper's stated means from its own tables (MNIST 4.58 / 4.06, CIFAR-10 35.2 /
    31.3); its depth-2 and deeper means (-2.5 / 0.99, -44.5 / 7.28) do not follow from the tables."""
    for ds, one, three in (("mnist", 4.58, 4.06), ("cifar10", 35.2, 31.3)):
        means = R.paper_statistics(ds, n_boot=20)["C1"]["group_means"]
        assert means["1"] == pytest.approx(one, abs=0.01) and means["3"] == pytest.approx(three, abs=0.1)
        assert means["2"] > 0  # the paper prints a decrease
    assert R.paper_statistics("mnist", n_boot=20)["C1"]["point"]["rho"] == pytest.approx(-0.187, abs=0.001)
    # CIFAR-10's one-layer lead over the deeper networks rests on the dead ones: without them it turns
    printed = R.paper_statistics("cifar10", n_boot=20)["C1"]["point"]["D1"]
    live = R.paper_statistics("cifar10", n_boot=20, live=True)["C1"]["point"]["D1"]
    assert printed == pytest.approx(1.66, abs=0.01) and live < 0


def test_early_stopping_keeps_the_best_epoch_and_stops_after_the_patience():
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    scores, states = iter([0.5, 0.7, 0.6, 0.65, 0.9]), []

    def score(m):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    info = R.train_early_stopped(model, x, y, score, max_epochs=5, patience=2, generator=torch.Generator().manual_seed(0),
                                 batch_size=16, lr=0.1)
    assert info == {"epochs": 4, "best_epoch": 2, "best_score": 0.7}  # epoch 5's 0.9 is never reached
    assert all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())


def _frame(values: dict) -> pd.DataFrame:
    """Rows (hidden, depth_group, params, seed, v) from {hidden: (group, params, [v per seed])}."""
    return pd.DataFrame([{"hidden": h, "depth_group": g, "params": p, "seed": k, "v": v}
                         for h, (g, p, vs) in values.items() for k, v in enumerate(vs)])



def test_the_contrasts_and_their_bootstrap():
    clear = _frame({"a": ("1", 10, [10, 11, 12]), "b": ("1", 20, [10, 10, 10]), "c": ("2", 30, [5, 6, 7]),
                    "d": ("2", 40, [5, 5, 5]), "e": (">3", 50, [2, 3, 4]), "f": (">3", 60, [2, 2, 2])})
    s = R.bootstrap_contrasts(clear, "v", n_boot=300)
    p = s["point"]
    assert (p["1-2"], p["1->3"], p["D1"], p["pooled"], p["rho"]) == pytest.approx((5.0, 8.0, 5.0, 6.5, -1.0))
    assert p["1-3"] != p["1-3"]  # no three-layer group here: NaN, not a number
    assert 0 < s["ci"]["D1"][0] <= p["D1"] <= s["ci"]["D1"][1] and s["ci"]["rho"][1] < 0
    lo95, hi95 = s["ci"]["1-2"]
    lo, hi = s["ci_pairwise"]["1-2"]
    assert lo <= lo95 and hi95 <= hi  # the Bonferroni level is wider
    assert s["seed_ci"]["D1"][0] > 0  # with the architectures fixed, seeds alone
    gm = s["group_means"]
    assert (gm["1"], gm["2"], gm[">3"]) == (10.5, 5.5, 2.5) and np.isnan(gm["3"])
    flat = R.bootstrap_contrasts(clear.assign(v=1.0), "v", n_boot=50)
    assert flat["point"]["D1"] == 0 and flat["ci"]["D1"] == (0.0, 0.0) and flat["point"]["rho"] != flat["point"]["rho"]


def test_welch_intervals_decide_the_gaps_and_agree_with_scipy():
    from scipy.stats import ttest_ind

    from lossbook.core.stats import welch_interval

    a, b = np.array([3.1, 4.2, 2.5, 5.0]), np.array([1.0, 2.2, 3.3, 0.5, 1.7, 2.9, 4.1, 0.2])
    for level in (0.95, R.PAIRWISE_LEVEL):
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(level)
        assert welch_interval(a, b, level) == pytest.approx((ci.low, ci.high))
    assert np.isnan(welch_interval(a[:1], b)).all()  # one value: no variance, no interval
    assert welch_interval(np.full(3, 2.0), np.full(4, 1.0)) == (1.0, 1.0)
    clear = _frame({"a": ("1", 10, [10, 11, 12]), "b": ("1", 20, [10, 10, 10]), "c": ("2", 30, [5, 6, 7]),
                    "d": ("2", 40, [5, 5, 5]), "e": (">3", 50, [2, 3, 4]), "f": (">3", 60, [2, 2, 2])})
    w = R.welch_contrasts(clear, "v")
    means = {"1": [11.0, 10.0], "2": [6.0, 5.0], ">3": [3.0, 2.0]}
    assert w["ci"]["1-2"] == pytest.approx(welch_interval(means["1"], means["2"]))
    assert w["ci"]["pooled"] == pytest.approx(welch_interval(means["1"], means["2"] + means[">3"]))
    assert np.isnan(w["ci"]["1-3"]).all()  # no three-layer group
    lo, hi = w["ci_pairwise"]["1-2"]
    assert lo < w["ci"]["1-2"][0] and w["ci"]["1-2"][1] < hi  # the Bonferroni level is wider
    assert R.pairwise_verdict(w, True) == "inconclusive"  # a gap that cannot be computed decides nothing


def test_the_practical_transfer_reading_is_the_rule_about_one_half():
    assert R.practical_transfer((0.6, 0.9)) == "reproduced"
    assert R.practical_transfer((0.1, 0.4)) == "not reproduced"
    assert R.practical_transfer((0.3, 0.7)) == "inconclusive"


def test_the_verdict_rules():
    assert R.verdict((0.5, 2.0), +1, True) == "reproduced"
    assert R.verdict((-2.0, -0.5), +1, True) == "not reproduced"
    assert R.verdict((-0.5, 2.0), +1, True) == "inconclusive"
    assert R.verdict((-2.0, -0.5), -1, True) == "reproduced"
    assert R.verdict((0.5, 2.0), +1, False) == "not comparable (reproduced)"
    gaps = ("1-2", "1-3", "1->3")

    def boot(ci, wide):
        return {"point": dict.fromkeys(gaps, 1.0), "ci": dict.fromkeys(gaps, ci), "ci_pairwise": dict.fromkeys(gaps, wide)}

    assert R.pairwise_verdict(boot((0.1, 2.0), (-0.1, 2.2)), True) == "reproduced"  # every gap above 0 at 95%
    one_low = boot((0.1, 2.0), (-0.1, 2.2))
    one_low["ci"]["1-3"], one_low["ci_pairwise"]["1-3"] = (-3.0, -1.0), (-3.5, -0.5)
    assert R.pairwise_verdict(one_low, True) == "not reproduced"  # one deeper group beats one layer
    one_low["ci_pairwise"]["1-3"] = (-3.5, 0.2)
    assert R.pairwise_verdict(one_low, True) == "inconclusive"  # below 0 at 95%, not at the Bonferroni level


def test_the_transfer_statistics_subtract_the_control_and_keep_directions_apart():
    rows = []
    sizes = {"[8]": 10, "[16]": 20, "[32]": 30}
    for k in (0, 1):
        for s, ps in sizes.items():
            for t, pt in sizes.items():
                transfer = 0.5 if ps < pt else 0.8 if ps > pt else 0.1  # smaller to larger: 30 pp below the noise
                rows.append({"seed": k, "source": s, "target": t, "source_params": ps, "target_params": pt,
                             "clean_acc": 0.9, "transfer_acc": transfer, "noise_acc": 0.8})
    t = R.transfer_statistics(pd.DataFrame(rows), n_boot=100)
    p = t["point"]
    assert (p["T"], p["T_reverse"], p["asymmetry"]) == pytest.approx((30.0, 0.0, 30.0)) and t["pairs"] == 3
    assert p["ratio"] == pytest.approx(30 / 70)  # the own FGSM drops 70 pp below the noise
    assert t["ci"]["T"] == pytest.approx((30.0, 30.0)) and t["white_box_drop_pp"] == pytest.approx(80.0)
    assert t["seed_ci"]["T"] == pytest.approx((30.0, 30.0))
    # seed 1 transfers 10 pp more: a seed-to-seed spread, which the seeds-only interval shows ({30, 35, 40})
    for r in rows:
        r["transfer_acc"] -= 0.1 * r["seed"] * (r["source_params"] < r["target_params"])
    t = R.transfer_statistics(pd.DataFrame(rows), n_boot=400)
    assert t["point"]["T"] == pytest.approx(35.0) and t["seed_ci"]["T"] == pytest.approx((30.0, 40.0))


def test_random_sign_moves_every_pixel_by_eps_inside_the_box():
    x = torch.rand(4, 1, 28, 28)
    z = R.random_sign(x, 0.05)
    inside = (x > 0.05) & (x < 0.95)  # pixels the box does not clip
    assert torch.allclose((z - x)[inside].abs(), torch.tensor(0.05), atol=1e-6)
    assert z.min() >= 0 and z.max() <= 1 and torch.equal(z, R.random_sign(x, 0.05))


def test_a_smoke_sweep_end_to_end_resumes_and_judges(tmp_path, data_available):
    plan = R.PLANS["smoke"]
    cal = R.calibrate("mnist", plan, tmp_path, progress=False)
    assert cal["target_pp"] == 3.1 and len(cal["steps"]) <= R.CALIBRATION_HALVINGS
    assert cal["tolerance_met"] == (abs(cal["median_drop_pp"] - 3.1) <= R.CALIBRATION_TOLERANCE_PP)
    eps = [s["eps"] for s in cal["steps"]]
    assert eps[0] == 0.05 and all(0 < e < 0.1 for e in eps)  # bisection inside the bracket
    sweep = R.run_sweep("mnist", plan, tmp_path, progress=False)
    assert len(sweep) == len(plan.archs()) * len(plan.seeds) * len(R.REGIMES)
    assert set(sweep["regime"]) == set(R.REGIMES) and set(sweep.loc[sweep.regime == "fixed", "eps"]) == {0.1}
    assert (sweep["acc_pgd_after_at"] <= sweep["acc_fgsm_after_at"] + 0.05).all()  # PGD-10 is the stronger attack
    assert sweep["st_epochs"].between(1, plan.max_st_epochs).all() and sweep["at_best_epoch"].ge(1).all()
    # the second call trains nothing: the saved rows and the cached models are reused as they are
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    pd.testing.assert_frame_equal(R.run_sweep("mnist", plan, tmp_path, progress=False), sweep)
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    transfer = R.run_transfer("mnist", plan, tmp_path, progress=False)
    n = len(plan.transfer_archs())
    assert len(transfer) == len(plan.seeds) * len(R.REGIMES) * n * n
    rows = R.claim_rows("mnist", "calibrated", sweep, transfer, n_boot=100)
    assert [r["claim"] for r in rows] == ["C1", "C2", "C3"]
    allowed = set(R.VERDICTS) | {f"not comparable ({v})" for v in R.VERDICTS}
    assert all(r["verdict"] in allowed and r["ci"][0] <= r["value"] <= r["ci"][1] for r in rows)
    line = R.claim_line("mnist", "calibrated", rows[0])  # what the command line prints
    assert line.startswith("mnist calibrated C1: D1 = ") and line.endswith(f": {rows[0]['verdict']}")
    # a sweep made for another plan is not taken
    other = R.RegimePlan(**{**plan.__dict__, "max_at_epochs": 3})
    with pytest.raises(ValueError, match="max_at_epochs"):
        R.run_sweep("mnist", other, tmp_path, progress=False)


def test_the_chapter_tables_read_a_complete_smoke_sweep(tmp_path, data_available):
    results = R.chapter_results(["mnist"], "smoke", compute=True, root=tmp_path)
    assert results["mnist"]["complete"] and results["mnist"]["done"] == R.planned_models(R.PLANS["smoke"])
    table = R.claims_table(results, "smoke")
    assert len(table) == 2 * 3 and list(table["regime"]) == ["calibrated"] * 3 + ["fixed"] * 3
    assert table["paper's tables (printed; live networks)"].iloc[0].startswith("-1.84 [")  # the paper's own D1
    assert table["paper's text"].iloc[0] == "+0.52 (4.58 vs 4.06 at three layers)"
    assert table.loc[table["claim"].str.startswith("C3"), "paper's text"].eq("no number").all()
    depth = R.depth_table(results)
    cal = depth[depth["regime"] == "calibrated"]
    assert list(cal["depth"]) == list(R.DEPTH_GROUPS) and cal["recovery, paper stated (pp)"].tolist() == [4.58, -2.5, 4.06, 0.99]
    assert len(depth) == 2 * len(R.DEPTH_GROUPS)  # the fixed regime too
    share = cal["share of the drop recovered, ours (%)"]
    assert share.tolist() == pytest.approx((100 * cal["recovery, ours (pp)"] / cal["FGSM drop before AT, ours (pp)"]).tolist())
    assert table["regime vs paper"].str.contains(r"at the epoch cap: ST \d+ of \d+ \(2\), AT \d+ of \d+ \(2\)").all()
    assert table["ours [95%]"].iloc[0].endswith("(bootstrap; not judged: the verdict reads the pairwise gaps)")
    assert table["secondary"].iloc[0].startswith("pairwise (Welch, judged) 1 vs 2: ")
    assert table["secondary"].iloc[0].count("(98.3%: [") == 3  # the Bonferroni interval "not reproduced" reads
    assert table["regime vs paper"].str.contains(r"pp left \(not judged\)").all()
    # C2's row reads the paper's own tables by the rule too
    assert table["paper's tables (printed; live networks)"].iloc[1].endswith(
        "(the rule on them: reproduced; not reproduced)")
    text = R.answer(results, "smoke")
    assert text.startswith("mnist: C1 ") and "; by parameters C1 " in text and "C3's transfer is " in text
    # the chapter's three views of the table lose no column; the regime view has one row per (regime, dataset)
    views = R.claims_views(table)
    assert set().union(*(v.columns for v in views.values())) == set(table.columns)
    assert len(views["verdicts"]) == 6 and views["regimes"]["regime"].tolist() == ["calibrated", "fixed"]
    assert "complete" in R.progress_sentence(results, "smoke")
    sweep = results["mnist"]["sweep"]
    hours = R.training_hours(sweep)
    # by hand: a standard model shared by two regimes' rows counts once, every adversarial training counts
    rows = pd.DataFrame({"hidden": ["[8]", "[8]", "[8]"], "seed": [0, 0, 1], "st_seconds": [3600, 3600, 7200],
                         "at_seconds": [1800, 1800, 0]})
    assert R.training_hours(rows) == 4.0 and R.training_hours(None) == 0.0 and hours > 0
    assert f"({hours:.1f} CPU-hours of training so far" in R.progress_sentence(results, "smoke")
    # the takeaway box: the verdicts once complete; before, where the sweep stands and the earlier sweep, labelled
    question, text, differs = R.takeaway(results, "smoke", pd.DataFrame(), {}, {})
    assert question == R.QUESTION and text == R.answer(results, "smoke") and "protocol_atras" in differs
    partial = {"mnist": {**results["mnist"], "complete": False, "done": 1}}
    _, text, _ = R.takeaway(partial, "smoke", pd.DataFrame(), {}, {})
    assert text.startswith("Not yet judged in the paper's regime: **mnist**: calibrated eps ")
    assert text.endswith("not the paper's: No sweep is available at this scale.")
    # one dataset complete, the other not: the complete one's verdicts are stated, the other's progress
    mixed = {"mnist": results["mnist"], "cifar10": {**results["mnist"], "complete": False, "done": 1}}
    _, text, _ = R.takeaway(mixed, "smoke", pd.DataFrame(), {}, {})
    assert text.startswith(f"In the paper's regime, {R.answer({'mnist': results['mnist']}, 'smoke')} Not yet judged "
                           "in the paper's regime: **cifar10**: calibrated eps ")
    assert text.startswith("In the paper's regime, mnist: C1 ")
    assert "No regime sweep at this scale." in R.takeaway({}, "smoke", pd.DataFrame(), {}, {})[1]


def test_glance_rows_fall_back_to_the_earlier_sweep_until_a_dataset_is_complete():
    """No committed cpu regime sweep is complete yet (or one is): each dataset appears once, either way."""
    rows = R.glance_rows("cpu")
    datasets = [r["claim"].rsplit("(", 1)[-1].rstrip(")") for r in rows]
    assert sorted(set(datasets)) == ["cifar10", "mnist"] and len(rows) == 6
    for ds in ("mnist", "cifar10"):
        complete = R.chapter_results([ds], "cpu")[ds]["complete"]
        mine = [r for r in rows if r["claim"].endswith(f"({ds})")]
        # not complete: not judged yet, the earlier sweep's reading shown and labelled
        assert all((r["verdict"] == PENDING) == (not complete) for r in mine)
        assert all(r["ours"].startswith("calibrated regime sweep at ") != complete for r in mine)
        if complete:  # C1's row shows the gaps its verdict reads (its numbers first), not D1 (shown, not judged)
            c1 = next(r for r in mine if r["claim"].startswith("adversarial training recovers most"))
            assert c1["ours"].startswith("recovery gaps in pp, one layer minus each deeper group: 1 vs 2: ")
            assert "1 vs >3: " in c1["ours"] and "(98.3%: [" in c1["ours"] and "not judged" not in c1["ours"]


def test_a_sweep_table_without_todays_columns_is_refused_in_one_line(tmp_path):
    from lossbook import store

    plan = R.PLANS["smoke"]
    cal = {"eps": 0.01}
    store.save(R.regime_dir("smoke", tmp_path) / "calibration-mnist.json", cal, R.calibration_request("mnist", plan))
    path = R.sweep_path("mnist", plan, tmp_path)
    store.save(path, pd.DataFrame([{"hidden": "[40]", "seed": 0, "regime": "calibrated"}]),
               R.sweep_request("mnist", plan, cal))
    with pytest.raises(store.ResultError, match="rows without depth_group, params, .* \\(made by an older lossbook\\); delete it"):
        R.load_sweep("mnist", plan, tmp_path)


def test_comparability_reports_the_drop_left_after_training_and_its_depth_gradient():
    """By hand: drops before AT of 5 and 3 pp (one layer) and 10 and 6 pp (eight layers), and 2, 1, 5 and 4 pp
    left after AT (median 3); the paper's live MNIST networks keep 0.04 pp after AT (Tables I-II)."""
    sweep = pd.DataFrame({"depth_group": ["1", "1", ">3", ">3"], "test_acc": [0.9, 0.9, 0.8, 0.8],
                          "acc_fgsm_before_at": [0.85, 0.87, 0.7, 0.74], "adv_test_acc": [0.9] * 4,
                          "acc_fgsm_after_at": [0.88, 0.89, 0.85, 0.86], "adv_train_acc": [0.95] * 4,
                          "at_best_epoch": [3] * 4})
    c = R.comparability(sweep, "mnist")
    assert c["drop_by_depth_ours_pp"] == pytest.approx((4.0, 8.0))
    assert c["drop_after_ours_pp"] == pytest.approx(3.0)
    assert c["drop_after_paper_pp"] == pytest.approx(0.04, abs=0.005)
    one, deep = c["drop_by_depth_paper_pp"]
    assert 0 < one < deep  # on its live networks the paper's drop also grows with depth
