import random

import pytest
import torch
from deap import gp

from lossbook import store
from lossbook.chapters import gp_search as G
from lossbook.core.losses import compile_formula, cross_entropy
from lossbook.search import engine as S
from lossbook.search import fitness as Fit
from lossbook.search import runs as SR
from lossbook.search import settings as SS

CFG = S.GPConfig(gn=3, ps=16, st=16, n_images=200, hof=3)


@pytest.fixture(scope="module")
def toy():
    """The paper's 3-class linear toy: attacks on it cost next to nothing."""
    from lossbook.chapters.toy_inconsistency import ToyModel, sample, to_unit

    x, y = sample(200, seed=0)
    return ToyModel(), to_unit(x), y, SS.Setting("toy", "linear", "st", "linf", 0.1)


def _evaluator(toy, seed=0):
    model, x, y, setting = toy
    return Fit.Evaluator(model, x, y, setting, steps=10, seed=seed)


def test_search_finds_a_loss_at_least_as_good_as_ce(toy):
    ev = _evaluator(toy)
    ce = ev.handcrafted()["ce"]
    rec = S.run_search(ev, S.GPConfig(gn=10, ps=100, st=100, hof=3), seed=2, progress=False)
    assert rec["best_fitness"] >= ce
    # the reported fitness is the R'' of the compiled formula
    assert ev([rec["best"]])[0][0] == rec["best_fitness"]
    assert [r["generation"] for r in rec["logbook"]] == list(range(11))
    assert all(r["best_so_far"] >= q["best_so_far"] for q, r in zip(rec["logbook"], rec["logbook"][1:]))


def test_formula_cache_never_changes_results(toy):
    class NoCache(Fit.Evaluator):
        def __call__(self, formulas):
            self.cache.clear()
            return super().__call__(formulas)

    model, x, y, setting = toy
    cfg = S.GPConfig(gn=5, ps=40, st=40, hof=3, semantic_cache=False)
    cached = S.run_search(Fit.Evaluator(model, x, y, setting, semantic=False), cfg, seed=2, progress=False)
    uncached = S.run_search(NoCache(model, x, y, setting, seed=0, semantic=False), cfg, seed=2, progress=False)
    keep = ("generation", "asked", "max", "mean", "min", "best_so_far", "size_mean")
    strip = lambda log: [{k: r[k] for k in keep} for r in log]
    assert strip(cached["logbook"]) == strip(uncached["logbook"])
    assert cached["hall_of_fame"] == uncached["hall_of_fame"]
    # without the cache only repeats within one generation are saved
    assert cached["cache_hits"] > uncached["cache_hits"]


def test_invalid_trees_get_zero(toy):
    ev = _evaluator(toy)
    fits, _ = ev(["Exp(Exp(Exp(Exp(Square(Mul(p, p))))))", "Neg(Sum(Mul(q, Log(Softmax(p)))))"])
    assert fits[0] == 0.0 and fits[1] > 0
    assert "Inf" in ev.errors["Exp(Exp(Exp(Exp(Square(Mul(p, p))))))"]


def test_resumed_run_equals_uninterrupted(toy, tmp_path):
    straight = S.run_search(_evaluator(toy), CFG, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt.pkl"
    assert S.run_search(_evaluator(toy), CFG, seed=3, checkpoint=ckpt, progress=False, stop_after=2) == \
        {"interrupted_at_generation": 2}
    random.seed(12345)  # whatever happened in between, the checkpoint's RNG state rules
    resumed = S.run_search(_evaluator(toy), CFG, seed=3, checkpoint=ckpt, progress=False)
    for key in ("best", "best_fitness", "hall_of_fame"):
        assert resumed[key] == straight[key]
    drop = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]
    assert drop(resumed["logbook"]) == drop(straight["logbook"])


def test_a_full_disk_during_a_checkpoint_loses_nothing(toy, tmp_path, monkeypatch):
    """The disk fills half-way through the third checkpoint write: the run stops with the error, the
    second checkpoint stays whole, and the next run resumes from it to the uninterrupted result."""
    import json

    from conftest import fill_disk_at

    straight = S.run_search(_evaluator(toy), CFG, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt.json"
    calls = fill_disk_at(monkeypatch, 3, "partial")
    with pytest.raises(OSError, match="No space left"):
        S.run_search(_evaluator(toy), CFG, seed=3, checkpoint=ckpt, progress=False)
    monkeypatch.undo()
    assert calls[0] == 3 and json.loads(ckpt.read_text()) and not list(tmp_path.glob("*.tmp"))
    calls = []

    class Counting(Fit.Evaluator):
        def __call__(self, formulas):
            calls.append(len(formulas))
            return super().__call__(formulas)

    model, x, y, setting = toy
    resumed = S.run_search(Counting(model, x, y, setting, steps=10, seed=0), CFG, seed=3, checkpoint=ckpt, progress=False)
    for key in ("best", "best_fitness", "hall_of_fame"):
        assert resumed[key] == straight[key]
    assert len(calls) < CFG.gn + 1  # resumed: the generations of the whole checkpoints were not evaluated again


def test_an_eps_that_lets_ce_break_every_image_is_named_in_one_line(data_available, tmp_path, capsys):
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1"], ["st"], "smoke", root=tmp_path, progress=False)
    cfg = S.with_overrides(SS.SEARCH_PRESETS["smoke"], gn=1, ps=4, st=4, n_images=16)
    SR.search_setting(SS.make_setting("mnist", "net1", "st", "linf", 1.0), "smoke", runs=1, cfg=cfg, root=tmp_path,
                     progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["note: mnist-net1-st-linf at eps=1: CE-PGD-10 already breaks every image, so no loss can do "
                   "better; a smaller eps (the paper's rule: R'' about 0.7) is needed"]
    SR.search_setting(SS.make_setting("mnist", "net1", "st", "linf", 0.01), "smoke", runs=1, cfg=cfg, root=tmp_path,
                     progress=False)
    assert "already breaks" not in capsys.readouterr().err  # control: a small eps leaves images unbroken


def test_formula_round_trip():
    pset = S.primitive_set()
    random.seed(0)
    p = torch.randn(7, 10)
    q = torch.nn.functional.one_hot(torch.randint(0, 10, (7,)), 10).float()
    for _ in range(50):
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, 1, 5))
        formula = str(tree)
        assert str(S.tree_from_formula(formula, pset)) == formula
        expected = gp.compile(tree, pset)(p, q)
        got = compile_formula(formula)(p, q)
        expected = torch.as_tensor(expected, dtype=torch.float32)
        assert torch.allclose(got, expected, equal_nan=True) or (got.isnan().all() and expected.isnan().all())


def test_depth_limit_is_respected():
    cfg = S.GPConfig(md=5, init_depth=(2, 5))
    pset = S.primitive_set()
    tb = S.toolbox(pset, cfg)
    random.seed(0)
    pop = tb.population(n=40)
    for _ in range(30):
        a, b = random.sample(pop, 2)
        c1, c2 = tb.mate(tb.clone(a), tb.clone(b))
        (m,) = tb.mutate(tb.clone(c1))
        pop += [c1, c2, m]
        assert max(t.height for t in (c1, c2, m)) <= cfg.md


def test_loss_loaded_by_name_from_results(toy, tmp_path):
    folder = tmp_path / "cpu" / "mnist-net1-st-linf"
    folder.mkdir(parents=True)
    for seed, formula, fit in [(0, "Neg(Sum(Mul(q, Log(Softmax(p)))))", 0.5), (1, "Mul(Log(Softmax(p)), q)", 0.6)]:
        store.save(folder / f"run-{seed}.json", {"seed": seed, "best": formula, "best_fitness": fit}, {"seed": seed})
    loss = SR.load_searched_loss("mnist-net1-st-linf", "cpu", root=tmp_path)
    torch.manual_seed(0)  # unseeded inputs made the atol=1e-4 comparison with CE fail now and then
    p, q = torch.randn(4, 10), torch.eye(10)[:4]
    assert torch.allclose(loss(p, q), compile_formula("Mul(Log(Softmax(p)), q)")(p, q))
    assert torch.allclose(SR.load_searched_loss("mnist-net1-st-linf", "cpu", run=0, root=tmp_path)(p, q),
                          cross_entropy(p, q), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="no search results for 'cifar10-net1-st-linf'"):
        SR.load_runs("cifar10-net1-st-linf", "cpu", root=tmp_path)


def test_calibration_reaches_the_target(toy):
    model, x, y, _ = toy
    eps = SS.calibrate_eps(model, x, y, "linf", target=0.7, tol=0.02)
    r = Fit.Evaluator(model, x, y, SS.Setting("mnist", "mlp", "st", "linf", eps), seed=0).handcrafted()["ce"]
    assert abs(r - 0.7) <= 0.05


def test_a_calibration_entry_made_beside_another_run_keeps_that_runs_entry(tmp_path, monkeypatch):
    """Two runs calibrating different settings at once: the one that writes second adds its entry to the file
    as it is then, so the first run's entry, written while the second computed, is kept."""
    monkeypatch.setattr(SS, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(SS, "evaluation_images", lambda model, dataset, n: (None, None, None))
    path = tmp_path / "cpu" / "calibration.json"
    request = {"what": "eps calibration", "scale": "cpu"}
    store.save(path, {"a@0.7": {"eps": 0.1, "n_images": 5}}, request)

    def compute(model, x, y):  # meanwhile, a run beside this one finishes its own entry
        store.update(path, request, lambda current: {**current, "b@0.7": {"eps": 0.2, "n_images": 5}})
        return {"eps": 0.3}

    entry = SS._calibration("c@0.7", "mnist", "net1", "st", "cpu", 5, compute, tmp_path, None)
    assert entry == {"eps": 0.3, "n_images": 5}
    assert store.load(path, request) == {"a@0.7": {"eps": 0.1, "n_images": 5}, "b@0.7": {"eps": 0.2, "n_images": 5},
                                         "c@0.7": {"eps": 0.3, "n_images": 5}}
    assert SS._calibration("b@0.7", "mnist", "net1", "st", "cpu", 5, None, tmp_path, None)["eps"] == 0.2  # reused


def test_paper_preset_is_table_iv():
    c = SS.SEARCH_PRESETS["paper"]
    assert (c.gn, c.md, c.ps, c.ts, c.st, c.cp, c.mp) == (100, 25, 200, 3, 200, 0.5, 0.3)
    assert SS.make_setting("cifar10", "net1", "at", "l1").eps == 34.0
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        SS.make_setting("mnist", "net1", "st", "l3")


def test_seeded_population_starts_from_the_handcrafted_trees(toy):
    from lossbook.core.losses import HANDCRAFTED_FORMULAS

    ev = _evaluator(toy)
    cfg = S.GPConfig(gn=1, ps=10, st=10, hof=3, seed_losses=("ce", "margin"))
    rec = S.run_search(ev, cfg, seed=0, progress=False)
    assert HANDCRAFTED_FORMULAS["ce"] in ev.cache and HANDCRAFTED_FORMULAS["margin"] in ev.cache
    assert rec["best_fitness"] >= ev.handcrafted()["margin"] - 1e-9


@pytest.mark.usefixtures("data_available")
def test_recompute_replaces_a_run_only_when_it_is_complete(tmp_path, monkeypatch):
    """Before: recompute deleted the saved runs first, and an interrupted recomputation lost them."""
    setting = SS.make_setting("mnist", "net1", "st", "linf", eps=0.1)
    (first,) = SR.search_setting(setting, "smoke", runs=1, root=tmp_path, progress=False)
    path = SR.search_dir(setting, "smoke", tmp_path) / "run-0.json"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SR, "run_search", killed)
    with pytest.raises(KeyboardInterrupt):
        SR.search_setting(setting, "smoke", runs=1, root=tmp_path, progress=False, force=True)
    assert store.load(path) == first  # the saved run is untouched
    # a finished run is loaded, not searched again, without force
    assert SR.search_setting(setting, "smoke", runs=1, root=tmp_path, progress=False) == [first]


@pytest.mark.usefixtures("data_available")
def test_a_saved_run_of_another_eps_is_never_taken(tmp_path):
    setting = SS.make_setting("mnist", "net1", "st", "linf", eps=0.15)
    SR.search_setting(setting, "smoke", runs=1, root=tmp_path, progress=False)
    other = SS.make_setting("mnist", "net1", "st", "linf", eps=0.07)
    assert SR.search_setting(other, "smoke", runs=1, root=tmp_path, load_only=True) == []
    with pytest.raises(store.ResultError, match=r"run-0.json: made for another request \(setting.eps=0.15 \(asked 0.07\)\)"):
        store.load(SR.search_dir(other, "smoke", tmp_path) / "run-0.json",
                   SR.run_request(other, SS.SEARCH_PRESETS["smoke"], "smoke", 0))


def test_one_eps_rule_for_the_cli_and_chapter_03(data_available):
    from lossbook.config import paper_eps
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1"], ["st"], "smoke", progress=False)
    assert SS.resolve_setting("mnist", "net1", "st", "l2", "smoke", eps="0.5").eps == 0.5
    assert SS.resolve_setting("mnist", "net1", "st", "l2", "smoke", eps="paper").eps == paper_eps("mnist", "net1", "st", "l2")
    results, missing = G.chapter_runs(["mnist-net1-st-linf", "cifar10-net2-at-l1"], "cpu", eps="paper")
    assert set(results) | set(missing) == {"mnist-net1-st-linf", "cifar10-net2-at-l1"}


def test_the_auto_eps_is_read_back_without_computing(data_available, tmp_path):
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1"], ["st"], "smoke", progress=False)
    assert SS.saved_auto_setting("mnist", "net1", "st", "linf", "smoke", root=tmp_path) is None  # nothing saved yet
    made = SS.auto_setting("mnist", "net1", "st", "linf", "smoke", n_images=32, root=tmp_path)
    assert SS.saved_auto_setting("mnist", "net1", "st", "linf", "smoke", root=tmp_path) == made
    assert SS.saved_auto_setting("mnist", "net1", "st", "l2", "smoke", root=tmp_path) is None  # another norm: not made


def test_lexicase_keeps_the_tree_that_breaks_every_image_any_other_breaks():
    class Ind(str):
        pass

    a, b, c = Ind("a"), Ind("b"), Ind("c")
    outcomes = {"a": torch.tensor([1, 1, 1, 0]).bool().numpy(), "b": torch.tensor([1, 0, 1, 0]).bool().numpy(),
                "c": torch.tensor([0, 1, 0, 0]).bool().numpy()}
    random.seed(0)
    assert set(map(str, S.select_lexicase([a, b, c], 20, outcomes))) == {"a"}
    outcomes["c"] = torch.tensor([0, 0, 0, 1]).bool().numpy()  # c alone breaks the last image: both survive
    assert set(map(str, S.select_lexicase([a, b, c], 50, outcomes))) == {"a", "c"}


def test_selection_and_size_limit_enter_a_runs_request_only_where_they_are_not_table_ivs():
    assert "selection" not in S.GPConfig().identity() and "size_limit" not in S.GPConfig().identity()
    lex = SS.SEARCH_PRESETS["lexicase-arm"].identity()
    assert (lex["selection"], lex["size_limit"], lex["md"]) == ("lexicase", "nodes", 25)
    with pytest.raises(ValueError, match="unknown selection 'roulette'; allowed: 'tournament', 'lexicase'"):
        S.GPConfig(selection="roulette")
    with pytest.raises(ValueError, match="pass semantic=False"):
        Fit.Evaluator(*toy_parts(), outcomes=True)


def toy_parts():
    from lossbook.chapters.toy_inconsistency import ToyModel, sample, to_unit

    x, y = sample(50, seed=0)
    return ToyModel(), to_unit(x), y, SS.Setting("toy", "linear", "st", "linf", 0.1)


def test_a_lexicase_run_keeps_its_node_limit_and_resumes_exactly(toy, tmp_path):
    model, x, y, setting = toy
    cfg = S.GPConfig(gn=3, ps=16, st=16, hof=3, md=9, semantic_cache=False, selection="lexicase", size_limit="nodes")

    def ev():
        return Fit.Evaluator(model, x, y, setting, steps=10, seed=0, semantic=False, outcomes=True)

    straight = S.run_search(ev(), cfg, seed=4, progress=False)
    ckpt = tmp_path / "lex.ckpt.json"
    assert S.run_search(ev(), cfg, seed=4, checkpoint=ckpt, progress=False, stop_after=2) == {"interrupted_at_generation": 2}
    random.seed(999)
    resumed = S.run_search(ev(), cfg, seed=4, checkpoint=ckpt, progress=False)
    assert (resumed["best"], resumed["hall_of_fame"]) == (straight["best"], straight["hall_of_fame"])
    with pytest.raises(ValueError, match="lexicase selection needs an Evaluator made with outcomes=True"):
        S.run_search(Fit.Evaluator(model, x, y, setting, semantic=False), cfg, seed=4, progress=False)


def test_node_limit_is_respected():
    cfg = S.GPConfig(md=25, init_depth=(2, 3), size_limit="nodes")  # initial trees have at most 15 nodes
    tb = S.toolbox(S.primitive_set(), cfg)
    random.seed(1)
    pop = tb.population(n=40)
    sizes = []
    for _ in range(60):
        a, b = random.sample(pop, 2)
        c1, c2 = tb.mate(tb.clone(a), tb.clone(b))
        (m,) = tb.mutate(tb.clone(c1))
        pop += [c1, c2, m]
        sizes += [len(c1), len(c2), len(m)]
    assert max(sizes) <= 25 and max(t.height for t in pop) > 3  # nodes are limited, height is not
