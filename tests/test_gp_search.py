"""The grid at smoke scale: runs, held-out outcomes, summary rows, resume without recomputation."""
import pandas as pd
import pytest

from lossbook.chapters import gp_search as G
from lossbook.config import SETTINGS
from lossbook.core.stats import VERDICTS


def test_grid_settings_and_paper_gains():
    assert len(SETTINGS) == 24 and len(set(SETTINGS)) == 24
    assert G.paper_gain("mnist-net1-st-l1") == 2.9 and G.paper_gain("cifar10-net2-at-l2") == 1.8
    plan = G.PLANS["cpu"]
    assert plan.preset == "grid" and sum(not s for _, s in plan.seeds) >= 2 and len(plan.seeds) >= 3
    assert G.run_config(plan, seeded=False).seed_losses == ()
    assert G.run_config(plan, seeded=True).seed_losses == G.SEEDED


@pytest.mark.usefixtures("data_available")
def test_smoke_grid_writes_a_verdict_per_setting_and_resumes(tmp_path):
    lines = []
    names = ["mnist-net1-st-linf", "mnist-net1-at-l2"]
    path = G.run_grid("smoke", settings=names, root=tmp_path, progress=False, log=lines.append)
    df = pd.read_csv(path)
    assert list(df["setting"]) == names
    for col in ("eps", "runs", "paper_gain_pp", "search_gain_pp", "heldout_gain_pp", "ci_low", "ci_high", "p_value",
                "gain_over_best_handcrafted_pp", "verdict", "best_formula", "heldout_gain_pp_pgd20"):
        assert col in df.columns
    assert (df["runs"] == 2).all() and (df["seeded_runs"] == 1).all()
    assert set(df["verdict"]) <= set(VERDICTS)
    assert ((df["ci_low"] <= df["heldout_gain_pp"]) & (df["heldout_gain_pp"] <= df["ci_high"])).all()
    assert sum("run seed" in line and "skipped" not in line for line in lines) == 4
    # held-out outcomes: the searched loss and CE on the same 32 unseen images
    held = G.heldout_outcomes(G.grid_setting(names[0], G.PLANS["smoke"], tmp_path), G.PLANS["smoke"],
                              max(G.run_setting(names[0], G.PLANS["smoke"], tmp_path, False, lines.append),
                                  key=lambda r: r["best_fitness"]), tmp_path)
    assert held["broken"][10].shape == (4, 32)
    assert df.loc[0, "heldout_gain_pp"] == pytest.approx(
        100 * (held["broken"][10][0].mean() - held["broken"][10][1].mean()), abs=0.01)
    # a second call skips every finished run and reuses the held-out outcomes
    again = []
    G.run_grid("smoke", settings=names, root=tmp_path, progress=False, log=again.append)
    runs = [line for line in again if "run seed" in line]
    assert len(runs) == 4 and all("finished earlier, skipped" in line for line in runs)
    pd.testing.assert_frame_equal(pd.read_csv(path), df)
