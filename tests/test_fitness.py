"""The fitness caches: signatures, spot checks, resume, and the switch that turns them off."""
import random

import pytest
import torch

from lossbook.core.losses import HANDCRAFTED, HANDCRAFTED_FORMULAS
from lossbook.search import engine as S
from lossbook.search import fitness as Fit
from lossbook.search import settings as SS

CE = HANDCRAFTED_FORMULAS["ce"]


@pytest.fixture(scope="module")
def toy():
    from lossbook.chapters.toy_inconsistency import ToyModel, sample, to_unit

    x, y = sample(200, seed=0)
    return ToyModel(), to_unit(x), y, SS.Setting("toy", "linear", "st", "linf", 0.1)


@pytest.fixture(scope="module")
def logit_rows():
    """Generic logit rows (most of them misclassified) and labels."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(256, 10, generator=gen) * 3
    q = torch.nn.functional.one_hot(torch.randint(0, 10, (256,), generator=gen), 10).float()
    return p, q


@pytest.mark.parametrize("base", [CE, "Sum(Mul(q, p))", "Max(Softmax(p))"])
def test_equivalent_trees_share_a_signature(base, logit_rows):
    p, q = logit_rows
    same = [base, f"Add({base}, 0)", f"Neg(Neg({base}))", f"Mul({base}, 1)", f"Mul({base}, Exp(1))",
            f"Add({base}, 1)", f"Add({base}, Exp(1))"]
    sigs = {Fit.signature(f, p, q) for f in same}
    assert len(sigs) == 1 and None not in sigs
    # a negative factor reverses the direction: another behaviour
    assert Fit.signature(f"Neg({base})", p, q) not in sigs


def test_handcrafted_losses_have_four_signatures(logit_rows):
    p, q = logit_rows
    sigs = [Fit.signature(fn, p, q) for fn in HANDCRAFTED.values()]
    assert len(set(sigs)) == 4 and None not in sigs
    # the formula and the callable of CE behave alike
    assert Fit.signature(CE, p, q) == Fit.signature(HANDCRAFTED["ce"], p, q)


def test_invalid_on_the_probe(logit_rows):
    p, q = logit_rows
    assert Fit.signature("Exp(Exp(Exp(Exp(Square(Mul(p, p))))))", p, q) is None
    assert Fit.signature(lambda p, q: p[:, :1] / 0.0, p, q) is None  # Inf
    assert Fit.signature(lambda p, q: 1 / 0, p, q) is None  # raises


def test_cw_and_margin_merge_where_only_correct_rows_matter(toy):
    """On a probe of correctly classified rows C&W and margin share a gradient, and in "any" mode
    (broken rows leave the attack) their attacks agree exactly."""
    model, x, y, setting = toy
    p, q = Fit.probe_logits(model, x, y, "linf", 0.1)
    assert p.argmax(1).eq(q.argmax(1)).all() and len(p) > 100
    assert Fit.signature(HANDCRAFTED_FORMULAS["cw"], p, q) == Fit.signature(HANDCRAFTED_FORMULAS["margin"], p, q)
    ev = Fit.Evaluator(model, x, y, setting, semantic=False)
    fits, _ = ev([HANDCRAFTED_FORMULAS["cw"], HANDCRAFTED_FORMULAS["margin"]])
    assert fits[0] == fits[1]


def test_scaled_probe_rows_tell_a_threshold_from_its_confident_branch():
    """-|1 - p_y| is -p_y wherever p_y > 1: confident rows alone merge them, the scaled rows do not."""
    model = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(3 * torch.eye(3))
    x, y = torch.eye(3).repeat(20, 1) * 0.9 + 0.05, torch.arange(3).repeat(20)
    p, q = Fit.probe_logits(model, x, y, "linf", 0.05)
    assert len(p) == 2 * len(x) * len(Fit.PROBE_SCALES) and p.argmax(1).eq(q.argmax(1)).all()
    p1, q1 = p[:2 * len(x)], q[:2 * len(x)]  # the rows as the model gives them
    assert (p1 * q1).sum(1).min() > 1
    threshold, linear = "Neg(Abs(Add(1, Neg(Sum(Mul(q, p))))))", "Neg(Sum(Mul(q, p)))"
    assert Fit.signature(threshold, p1, q1) == Fit.signature(linear, p1, q1)
    assert Fit.signature(threshold, p, q) != Fit.signature(linear, p, q)


def test_a_signature_table_from_another_probe_is_not_restored(toy):
    model, x, y, setting = toy
    ev = Fit.Evaluator(model, x, y, setting)
    ev([CE, "Sum(Mul(q, p))"])
    state = ev.state()
    again = Fit.Evaluator(model, x, y, setting)
    again.restore(state)
    assert again.signatures == ev.signatures and again.cache == ev.cache
    other = Fit.Evaluator(model, x, y, setting)
    other.restore({**state, "probe": "another"})
    assert other.signatures == {} and other.cache == ev.cache  # the exact formula cache is kept


def test_semantic_hits_skip_attacks_and_keep_the_fitness(toy):
    model, x, y, setting = toy
    trees = [CE, f"Add({CE}, 0)", f"Mul({CE}, 1)", f"Neg(Neg({CE}))", f"Add({CE}, 1)", "Sum(Mul(q, p))"]
    on = Fit.Evaluator(model, x, y, setting, spot_share=0.0001)
    off = Fit.Evaluator(model, x, y, setting, semantic=False)
    fits_on, _ = on(trees)
    fits_off, _ = off(trees)
    assert fits_on == fits_off
    assert on.last["attacked"] == 2 + on.last["spot_checks"] and on.last["spot_checks"] == 1
    assert on.last["semantic_hits"] == 3 and on.last["disagreements"] == 0
    assert off.last["attacked"] == 6 and off.last["semantic_hits"] == 0


def test_a_false_merge_is_caught_and_split(toy, monkeypatch):
    model, x, y, setting = toy
    ev = Fit.Evaluator(model, x, y, setting, spot_share=1.0)
    monkeypatch.setattr(Fit, "signature", lambda f, p, q, decimals=4: "one signature for all")
    trees = [CE, "Sum(Mul(q, p))", "Neg(Sum(Mul(q, p)))", "Sum(q)"]
    fits, _ = ev(trees)
    truth, _ = Fit.Evaluator(model, x, y, setting, semantic=False)(trees)
    assert fits == truth  # every hit was spot-checked: no fitness came from the false merge
    assert ev.last["disagreements"] >= 1 and "one signature for all" in ev.split
    assert all(d["stored"] != d["attacked"] for d in ev.disagreements)
    # from then on members of the split signature are attacked one by one
    fits2, _ = ev(["Mul(Sum(Mul(q, p)), Exp(1))"])
    assert ev.last["attacked"] == 1 and ev.last["semantic_hits"] == 0


def test_spot_checks_catch_a_planted_wrong_fitness(toy):
    model, x, y, setting = toy
    ev = Fit.Evaluator(model, x, y, setting)  # default share: at least one check per call with hits
    ev([CE])
    sig = next(iter(ev.signatures))
    ev.signatures[sig] = 0.999  # a corrupted entry
    fits, _ = ev([f"Add({CE}, 0)"])
    assert ev.last["spot_checks"] == 1 and ev.last["disagreements"] == 1
    assert fits[0] == ev.cache[CE]


def test_search_with_the_cache_off_attacks_every_new_formula(toy):
    model, x, y, setting = toy
    cfg = S.GPConfig(gn=3, ps=20, st=20, hof=3, semantic_cache=False)
    ev = Fit.Evaluator(model, x, y, setting, semantic=False)
    rec = S.run_search(ev, cfg, seed=1, progress=False)
    for row in rec["logbook"]:
        assert row["semantic_hits"] == row["spot_checks"] == row["probe_invalid"] == 0
        assert row["attacked"] + row["formula_hits"] == row["asked"]
    assert rec["attacked"] == len(ev.cache)


def test_resume_with_the_cache_on_equals_uninterrupted(toy, tmp_path):
    model, x, y, setting = toy
    cfg = S.GPConfig(gn=4, ps=24, st=24, hof=3)
    straight = S.run_search(Fit.Evaluator(model, x, y, setting, seed=3), cfg, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt.json"
    S.run_search(Fit.Evaluator(model, x, y, setting, seed=3), cfg, seed=3, checkpoint=ckpt, progress=False,
                 stop_after=2)
    random.seed(999)
    resumed = S.run_search(Fit.Evaluator(model, x, y, setting, seed=3), cfg, seed=3, checkpoint=ckpt, progress=False)
    drop = lambda rec: {k: v for k, v in rec.items() if k not in ("seconds", "logbook")}
    assert drop(resumed) == drop(straight)
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]
    assert strip(resumed["logbook"]) == strip(straight["logbook"])
    assert straight["semantic_hits"] > 0


def test_a_checkpoint_of_another_eps_is_refused(toy, tmp_path):
    model, x, y, setting = toy
    cfg = S.GPConfig(gn=3, ps=12, st=12, hof=3)
    ckpt = tmp_path / "run.ckpt.json"
    S.run_search(Fit.Evaluator(model, x, y, setting), cfg, seed=0, checkpoint=ckpt, progress=False, stop_after=1)
    other = SS.Setting("toy", "linear", "st", "linf", 0.2)
    with pytest.raises(ValueError, match=r"run.ckpt.json: checkpoint made for another request \(differs in setting"):
        S.run_search(Fit.Evaluator(model, x, y, other), cfg, seed=0, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="run.ckpt.json: unreadable search checkpoint"):
        S.run_search(Fit.Evaluator(model, x, y, setting), cfg, seed=0, checkpoint=ckpt, progress=False)


def test_the_hall_of_fame_is_verified_by_its_own_attacks(toy, monkeypatch):
    """Even with every merge false and no spot checks, the reported fitnesses are the trees' own."""
    model, x, y, setting = toy
    monkeypatch.setattr(Fit, "signature", lambda f, p, q, decimals=4: "one signature for all")
    ev = Fit.Evaluator(model, x, y, setting, spot_share=0.0)
    ev.spot_share = 0.0
    monkeypatch.setattr(Fit.random.Random, "sample", lambda self, pop, k: [])  # no spot checks at all
    rec = S.run_search(ev, S.GPConfig(gn=2, ps=12, st=12, hof=4), seed=0, progress=False)
    truth = Fit.Evaluator(model, x, y, setting, semantic=False)
    for h in rec["hall_of_fame"]:
        assert truth([h["formula"]])[0][0] == h["fitness"]
    fits = [h["fitness"] for h in rec["hall_of_fame"]]
    assert fits == sorted(fits, reverse=True) and rec["best_fitness"] == fits[0]
