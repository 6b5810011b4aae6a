"""Transfer tables (Figs. 5-8): searched losses loaded by name, one cell per (source, target), the same
starts for every loss, saved results reused only for the same request."""
import pandas as pd
import pytest
import torch

from lossbook import store
from lossbook.chapters import transfer as T
from lossbook.core import data
from lossbook.core.attacks import evaluate_losses
from lossbook.core.losses import HANDCRAFTED, HANDCRAFTED_FORMULAS, compile_formula
from lossbook.search import runs as SR
from lossbook.search import settings as SS

SOURCES = {"mnist-net1-st-linf": HANDCRAFTED_FORMULAS["margin"], "mnist-net1-at-linf": "Mul(Log(Softmax(p)), q)"}


@pytest.fixture(scope="module")
def searched(data_available, tmp_path_factory):
    """Two fake search results (the margin tree, and CE written with the wrong sign) for the smoke models."""
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1"], ["st", "at"], "smoke", progress=False)
    root = tmp_path_factory.mktemp("results")
    for name, formula in SOURCES.items():
        folder = root / "search" / "smoke" / name
        setting = SS.make_setting(*SS.parse_setting(name), eps=0.1)
        store.save(folder / "run-0.json", {"seed": 0, "best": formula, "best_fitness": 0.5,
                                           "setting": {**vars(setting)}}, {"seed": 0})
    return root


@pytest.fixture()
def in_results(searched, monkeypatch):
    monkeypatch.setattr(SR, "RESULTS_DIR", searched)
    monkeypatch.setattr(SS, "RESULTS_DIR", searched)
    return searched


def test_loss_loaded_by_name_equals_the_original_callable(in_results):
    found = T.searched_loss("mnist-net1-st-linf", "smoke")
    assert found.formula == SOURCES["mnist-net1-st-linf"] and found.setting.eps == 0.1
    p, q = torch.randn(64, 10), torch.eye(10)[torch.randint(0, 10, (64,))]
    assert torch.equal(found.loss()(p, q), compile_formula(found.formula)(p, q))
    # the margin tree is the margin loss written in primitives
    assert torch.allclose(found.loss()(p, q).sum(1), HANDCRAFTED["margin"](p, q).reshape(-1), atol=1e-3)
    from lossbook.core.train import load_model

    model = load_model("mnist", "net1", "st", "smoke")
    x, y = data.load("mnist", "test", 64)
    res = evaluate_losses(model, x, y, [found.loss(), compile_formula(found.formula)], eps=0.1, steps=5)
    assert res.risk[0] == res.risk[1]
    assert T.searched_sources("smoke", "mnist", root=in_results / "search") == sorted(SOURCES)
    with pytest.raises(FileNotFoundError, match="no search results for 'mnist-net2-st-linf'"):
        T.searched_loss("mnist-net2-st-linf", "smoke")
    with pytest.raises(ValueError, match="not of the form"):
        T.searched_loss("mnist-net1", "smoke")


def test_cross_setting_has_one_cell_per_source_and_target(in_results, tmp_path):
    cfg = T.transfer_config("smoke", n_images=24)
    targets = [SS.make_setting("mnist", "net1", "st", "linf", 0.1), SS.make_setting("mnist", "net1", "at", "l2", 1.5),
               SS.make_setting("mnist", "net1", "st", "l1", 8.0)]
    table = T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, progress=False)
    assert len(table) == len(SOURCES) * len(targets)
    assert not table.duplicated(["source", "target"]).any()
    m = T.gain_matrix(table)
    assert m.shape == (2, 3) and list(m.index) == list(SOURCES) and list(m.columns) == [t.name() for t in targets]
    assert table[[c for c in table if c.startswith("risk")]].stack().between(0, 1).all()
    assert (table["gain_over_ce_pp"] == (100 * (table["risk_searched"] - table["risk_ce"])).round(2)).all()
    assert (table["gain_over_best_reference_pp"] <= table["gain_over_ce_pp"]).all()
    assert (table["n_images"] == 24).all()
    # the CE tree with the wrong sign descends from the same starts: it breaks no more than CE does
    wrong_sign = table[table["source"] == "mnist-net1-at-linf"]
    assert (wrong_sign["risk_searched"] <= wrong_sign["risk_ce"]).all() and (wrong_sign["gain_over_ce_pp"] <= 0).all()
    # each source's rows saved with what made them; reused for the same request, loaded without computing
    first = next(iter(SOURCES))
    path = T.cross_path(["mnist"], "smoke", first, root=tmp_path)
    assert path == tmp_path / "smoke" / "cross-mnist--from-mnist-net1-st-linf.csv"
    saved = store.record(path)["request"]
    assert (saved["source"], saved["formula"], saved["n_images"]) == (first, SOURCES[first], 24)
    pd.testing.assert_frame_equal(T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, progress=False), table)
    pd.testing.assert_frame_equal(T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, compute=False), table)
    # the verdict counts the cells away from the source's own setting (mnist-net1-st-linf is a target too)
    lines = T.verdicts([], {"mnist": table})
    off = table[table["source"] != table["target"]]
    assert len(off) == 5 and len(lines) == 1
    assert f"gain over CE > 0 in {int((off['gain_over_ce_pp'] > 0).sum())} of 5 cells" in lines[0]
    with pytest.raises(ValueError, match="unknown column 'risk_ce'; allowed: 'gain_over_ce_pp', 'gain_over_best_reference_pp'"):
        T.gain_matrix(table, "risk_ce")
    # a truncated table is never read silently (it was: half the rows, other conclusions)
    lines_of = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines_of[: len(lines_of) // 2]))
    with pytest.raises(store.ResultError, match=r"cross-mnist--from-mnist-net1-st-linf.csv: content does not match "
                                                r"its record \(3 rows"):
        T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, compute=False)


def test_a_new_source_adds_its_rows_and_leaves_the_saved_ones(in_results, tmp_path, monkeypatch):
    cfg = T.transfer_config("smoke", n_images=16)
    targets = [SS.make_setting("mnist", "net1", "st", "linf", 0.1), SS.make_setting("mnist", "net1", "at", "l2", 1.5)]
    first, second = SOURCES
    attacked, rows = [], T._cross_rows
    monkeypatch.setattr(T, "_cross_rows", lambda found, *a: attacked.append(list(found)) or rows(found, *a))
    one = T.cross_setting([first], targets, "smoke", cfg, root=tmp_path, progress=False)
    # without computing, only what is saved for exactly this request is shown
    partial = T.cross_setting([first, second], targets, "smoke", cfg, root=tmp_path, compute=False)
    pd.testing.assert_frame_equal(partial, one)
    both = T.cross_setting([first, second], targets, "smoke", cfg, root=tmp_path, progress=False)
    assert list(dict.fromkeys(both["source"])) == [first, second] and len(both) == 4
    assert attacked == [[first], [second]]  # the saved source was not attacked again
    pd.testing.assert_frame_equal(both[both["source"] == first].reset_index(drop=True), one)
    # rows made on other targets (another eps) are not taken
    other = [SS.make_setting("mnist", "net1", "st", "linf", 0.2), targets[1]]
    assert T.cross_setting([first, second], other, "smoke", cfg, root=tmp_path, compute=False) is None


def test_an_interrupted_cross_table_resumes_at_its_first_unfinished_target(in_results, tmp_path, monkeypatch):
    cfg = T.transfer_config("smoke", n_images=16)
    targets = [SS.make_setting("mnist", "net1", "st", "linf", 0.1), SS.make_setting("mnist", "net1", "at", "l2", 1.5),
               SS.make_setting("mnist", "net1", "st", "l1", 8.0)]
    attack, norms = T._attack_all, []

    def dies_on_the_second(model, x, y, named, norm, *a):
        if len(norms) == 1:
            raise KeyboardInterrupt
        norms.append(norm)
        return attack(model, x, y, named, norm, *a)

    monkeypatch.setattr(T, "_attack_all", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, progress=False)
    partial = tmp_path / "smoke" / "partial"
    assert len(list(partial.glob("*.csv"))) == 1 and not list((tmp_path / "smoke").glob("cross-*.csv"))
    monkeypatch.setattr(T, "_attack_all", lambda model, x, y, named, norm, *a: norms.append(norm) or
                        attack(model, x, y, named, norm, *a))
    resumed = T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path, progress=False)
    assert norms == ["linf", "l2", "l1"]  # the first target was not attacked again
    assert not list(partial.glob("*")) and len(resumed) == len(SOURCES) * len(targets)
    fresh = T.cross_setting(list(SOURCES), targets, "smoke", cfg, root=tmp_path / "again", progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)  # the same table as an uninterrupted run


def test_eps_sweep_covers_every_eps_budget_and_loss(in_results, tmp_path):
    cfg = T.transfer_config("smoke", n_images=16, steps=(3, 6), eps_factors=(0.5, 1.0))
    df = T.eps_sweep("mnist-net1-st-linf", "smoke", cfg, root=tmp_path, progress=False)
    assert len(df) == 2 * 2 * 4 and set(df["loss"]) == {"searched", "ce", "cw", "dlr"}
    assert sorted(set(df["eps"])) == [0.05, 0.1]
    # same starts: the margin tree and C&W (the margin clipped at 0, equal until a row breaks) agree up to rounding
    wide = df.pivot_table(index=["eps", "steps"], columns="loss", values="risk")
    assert ((wide["searched"] - wide["cw"]).abs() <= 2 / 16 + 1e-9).all()
    assert T.scaled_eps(0.7, 1.5, "linf") == 1.0 and T.scaled_eps(0.7, 1.5, "l2") == 1.05
    s = T.summary([df])
    assert len(T.verdicts([df], {})) == len(s) and "PGD-6: " in T.verdicts([df], {})[1]
    assert list(s["steps"]) == [3, 6] and (s["eps"] == 0.1).all()
    assert s["gain over CE (pp)"].tolist() == pytest.approx((100 * (wide.loc[0.1, "searched"] - wide.loc[0.1, "ce"])).tolist())


def test_extended_data_reports_unavailable_data_and_works_with_a_loader(in_results, tmp_path):
    cfg = T.transfer_config("smoke", n_images=16, eps_factors=(1.0,))

    def unavailable():
        raise data.DataError("QMNIST's extended test set (test50k) is not available")

    with pytest.raises(data.DataError, match="test50k"):
        T.extended_data("mnist-net1-st-linf", "smoke", cfg, root=tmp_path, loader=unavailable)
    df = T.extended_data("mnist-net1-st-linf", "smoke", cfg, root=tmp_path, progress=False,
                         loader=lambda: data.load("mnist", "train", 200))  # any MNIST-like set stands in
    assert set(df["data"]) == {"MNIST test", "QMNIST extended (test50k)"} and len(df) == 2 * 4


def test_transfer_config_rejects_unknown_scale():
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        T.transfer_config("huge")


def test_chapter_norms_are_checked_with_the_allowed_values():
    assert set(T.chapter_norms("all", "mnist_norms")) == {"linf", "l1", "l2"}
    assert T.chapter_norms("l2, linf", "mnist_norms") == ["l2", "linf"]
    with pytest.raises(ValueError, match="norm in mnist_norms.*linf"):
        T.chapter_norms("l3", "mnist_norms")


def test_a_source_of_another_preset_is_read_from_that_preset(in_results):
    # chapter 04 names the grid's CIFAR-10 searches "grid:<setting>": the grid's runs, not the scale's
    folder = in_results / "search" / "grid" / "mnist-net1-st-linf"
    setting = SS.make_setting("mnist", "net1", "st", "linf", eps=0.05)
    store.save(folder / "run-0.json", {"seed": 0, "best": HANDCRAFTED_FORMULAS["ce"], "best_fitness": 0.6,
                                       "setting": {**vars(setting)}}, {"seed": 0})
    own, grid = T.searched_loss("mnist-net1-st-linf", "smoke"), T.searched_loss("grid:mnist-net1-st-linf", "smoke")
    assert (own.formula, own.setting.eps) == (SOURCES["mnist-net1-st-linf"], 0.1)
    assert (grid.formula, grid.setting.eps, grid.source) == (HANDCRAFTED_FORMULAS["ce"], 0.05, "grid:mnist-net1-st-linf")
    assert T.split_source("grid:mnist-net1-st-linf") == ("grid", "mnist-net1-st-linf")
    assert T.file_safe("grid:mnist-net1-st-linf") == "grid-mnist-net1-st-linf"
    with pytest.raises(ValueError, match="unknown search preset of source 'huge:mnist-net1-st-linf' 'huge'; allowed: "
                                         "'smoke', 'cpu', 'paper', 'grid'"):
        T.searched_loss("huge:mnist-net1-st-linf", "smoke")


def test_the_chapter_lists_the_sources_without_saved_rows(in_results, monkeypatch):
    monkeypatch.setattr(T, "target_settings", lambda ds, scale, norms, compute, arm: [SS.make_setting(ds, "net1", "st", "linf", 0.1)])
    monkeypatch.setattr(T, "cross_setting", lambda sources, targets, scale, cfg, compute: pd.DataFrame(
        {"source": ["mnist-net1-st-linf"], "target": ["mnist-net1-st-linf"]}))
    cfg = T.transfer_config("cpu")
    cross, missing = T.chapter_cross(["mnist-net1-st-linf"], "cpu", cfg, compute=False,
                                     cifar_names=["grid:cifar10-net1-st-linf", "mnist-net1-st-linf"])
    assert list(cross) == ["mnist", "cifar10"]  # CIFAR-10's saved rows: the MNIST source's, not the grid's
    assert missing == ["cross-setting rows for cifar10 (grid:cifar10-net1-st-linf)"]


def test_the_cells_away_from_the_source_skip_its_own_setting_whatever_its_preset():
    table = pd.DataFrame({"source": ["grid:cifar10-net1-st-linf"] * 2 + ["cifar10-net1-st-l2"] * 2,
                          "target": ["cifar10-net1-st-linf", "cifar10-net1-st-l2"] * 2,
                          "gain_over_ce_pp": [9.0, 1.0, 2.0, 9.0], "gain_over_best_reference_pp": [9.0, -1.0, 0.5, 9.0]})
    assert len(T.away_from_source(table)) == 2
    line = T.verdicts([], {"cifar10": table})[0]
    assert "gain over CE > 0 in 2 of 2 cells (median +1.5 pp)" in line and "best of CE/C&W/DLR > 0 in 1 " in line


def test_the_gain_map_is_centred_at_zero():
    """A loss of 15 pp must look as strong as a gain of 15 pp (the map was clipped at 0 before)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from lossbook.publish.plots import gain_heatmap

    fig = gain_heatmap(pd.DataFrame([[-15.3, 2.0], [0.0, 3.1]], index=["a", "b"], columns=["x", "y"]), "t")
    mesh = fig.axes[0].collections[0]
    assert (mesh.norm.vmin, mesh.norm.vmax) == (-15.3, 15.3)
    low, zero = mesh.cmap(mesh.norm(-15.3)), mesh.cmap(mesh.norm(0.0))
    assert low[0] > low[2] and min(zero[:3]) > 0.9  # red for the loss, near white at 0


def test_several_panels_become_one_figure_with_every_panel_in_it():
    """One caption, one image: the heat maps of two datasets are drawn into one figure, each panel with
    its own scale; the figure is as wide as the widest panel and as tall as all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from lossbook.publish.plots import compose, gain_heatmap_size, gain_heatmaps

    small = pd.DataFrame([[1.0, -2.0]], index=["a"], columns=["x", "y"])
    large = pd.DataFrame([[-15.3, 2.0, 0.0], [0.0, 3.1, 1.0]], index=["a", "b"], columns=["x", "y", "z"])
    fig = gain_heatmaps([(small, "mnist", "gain over CE (pp)"), (large, "cifar10", "gain over CE (pp)")])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("mnist") == 1 and titles.count("cifar10") == 1
    spans = sorted(ax.collections[0].norm.vmax for ax in fig.axes if ax.get_title())
    assert spans == [2.0, 15.3]
    width, height = fig.get_size_inches()
    assert width == max(gain_heatmap_size(small)[0], gain_heatmap_size(large)[0])
    assert height == gain_heatmap_size(small)[1] + gain_heatmap_size(large)[1]
    with pytest.raises(ValueError, match="no panels to draw"):
        compose([])


def test_q2_is_counted_once_for_the_chapter_and_the_glance_page():
    import pandas as pd

    from lossbook.chapters import transfer as T

    table = pd.DataFrame({"source": ["mnist-net1-st-linf"] * 5,
                          "target": ["mnist-net1-st-linf", "mnist-net2-st-linf", "mnist-net1-at-linf", "mnist-net2-at-linf",
                                     "mnist-net1-st-l2"],
                          "gain_over_ce_pp": [9.0, 1.0, -2.0, 0.0, 3.0]})
    a = T.q2_answer(table)  # the source's own setting (+9) is left out, the tie counted apart
    assert (a["k"], a["n"], a["ties"], a["losses"], a["median_pp"]) == (2, 3, 1, 1, 0.5)
    assert (a["k_losses"], a["n_losses"]) == (1, 1)  # one loss, mean +0.5 away from its setting: the test's unit
    assert "positive for 1 of 1 searched losses (sign test over losses p = 1, inconclusive); by cell, 2 of 3 cells" in \
        T.takeaway({"mnist": table})
    two = pd.concat([table, table.assign(source="mnist-net2-st-linf", target=table.target.replace(
        {"mnist-net2-st-linf": "mnist-net1-st-linf", "mnist-net1-st-linf": "mnist-net2-st-linf"}),
        gain_over_ce_pp=[9.0, -1.0, -2.0, -3.0, 1.0])])
    b = T.q2_answer(two)  # the second loss: -1.0, -2.0, -3.0, 1.0 away from its own setting (mean -1.25)
    assert (b["k_losses"], b["n_losses"], b["k"], b["n"]) == (1, 2, 3, 7)
    saved = T.saved_cross("cpu")
    for row in T.glance_rows("cpu"):
        ds = row["claim"].rsplit("(", 1)[1].rstrip(")")
        if ds in saved:
            b = T.q2_answer(saved[ds])
            assert row["ours"].startswith(f"{b['k_losses']} of {b['n_losses']} searched losses") and row["verdict"] == b["verdict"]


def test_an_arm_source_is_the_arms_selected_loss_on_its_models_and_held_out_images(tmp_path, data_available, monkeypatch):
    """``smoke-arm:<setting>``: the best of the arm's unseeded runs, at the arm's eps, on the arm's models;
    evaluated after the arm's search images; never mixed with other sources in one cross table."""
    from lossbook.chapters import paper_arm as A
    from lossbook.search.settings import SEARCH_PRESETS

    for module in (SR, SS, A):
        monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    plan, name = A.ARMS["smoke"], "mnist-net1-st-linf"
    with pytest.raises(FileNotFoundError, match="the smoke arm has 0 of the 2 runs of mnist-net1-st-linf; run "
                                                "`python -m lossbook paper-arm --arm smoke --settings mnist-net1-st-linf`"):
        T.searched_loss(f"smoke-arm:{name}", "smoke")
    A.judge_setting(name, plan, progress=False, log=lambda *a: None)
    found = T.searched_loss(f"smoke-arm:{name}", "smoke")
    best = A.best_run(A.arm_runs(name, plan, compute=False))
    assert (found.formula, found.fitness, found.model_scale) == (best["best"], best["best_fitness"], "smoke")
    assert found.setting == A.arm_setting(name, plan)
    assert T.held_out_skip(found) == SEARCH_PRESETS["smoke-arm"].n_images == 32
    assert T.arm_sources("smoke", "mnist") == [f"smoke-arm:{name}"]
    assert "the smoke arm's selected losses (unseeded runs only)" in T.regime([found])
    store.save(tmp_path / "search" / "smoke" / name / "run-0.json", {"seed": 0, "best": best["best"], "best_fitness": 0.5,
               "setting": {**vars(found.setting)}}, {"seed": 0})  # the same setting, searched outside the arm
    with pytest.raises(ValueError, match="the sources' evaluation sets differ"):
        T.cross_setting([f"smoke-arm:{name}", name], [found.setting], "smoke", root=tmp_path, compute=False)
