"""Chapter 07's study: every attack against the exact risk. A smoke study end to end (resumable, the
errors of every attack consistent with the verdicts), E's arithmetic on a hand-made table, soundness
of the committed results, and one-line errors for unknown studies."""
from dataclasses import replace

import pandas as pd
import pytest
import torch

from lossbook.chapters import exact_risk
from lossbook.core import certify

pytest.importorskip("highspy")
pytest.importorskip("torchattacks")


def _table(status, **broken):
    t = pd.DataFrame({"index": range(len(status)), "label": 0, "status": status, "by": "milp", "seconds": 1.0,
                      "unstable": 5, "stable": 5})
    for k, v in broken.items():
        t[k.replace("_", " ").replace("PGD 10", "PGD-10")] = v
    return t


def test_the_error_of_an_attack_is_the_share_of_vulnerable_images_it_missed():
    t = _table(["vulnerable", "vulnerable", "robust", "unknown"], PGD_10_ce=[True, False, False, False])
    g = exact_risk.gap_table(t, "linf").set_index("attack")
    assert g.loc["PGD-10 ce", "R''"] == 0.25
    assert g.loc["PGD-10 ce", "E_low"] == 0.25 and g.loc["PGD-10 ce", "E_high"] == 0.5  # the unknown image may be
    assert g.loc["PGD-10 ce", "E_ci_low"] <= 0.25 <= 0.5 <= g.loc["PGD-10 ce", "E_ci_high"]
    assert list(exact_risk.only_exact(t, "linf")["index"]) == [1]


def test_a_robust_image_broken_by_an_attack_is_reported():
    t = _table(["robust", "vulnerable"], PGD_10_ce=[True, True])
    with pytest.raises(AssertionError, match=r"images \[0\] are proven robust"):
        exact_risk.check_soundness(t, "hand-made")


def test_unknown_studies_and_models_are_one_line_errors():
    with pytest.raises(ValueError, match="allowed: 'mnist-mlp64-fgsm-linf-eps0.05'"):
        exact_risk.select_studies("nope", "smoke")
    with pytest.raises(ValueError, match="verified model"):
        exact_risk.Study("mnist-net1", "linf", 0.1, 10, 1.0)
    with pytest.raises(ValueError, match="norm for exact verification 'l3'; allowed: 'linf', 'l1', 'l2'"):
        exact_risk.Study("mnist-mlp64-st", "l3", 0.1, 10, 1.0)


def test_a_smoke_study_end_to_end(data_available, tmp_path):
    # at eps 0.1 (not the smoke study's 0.05) some image is vulnerable, so a witness is there to audit
    st = replace(exact_risk.select_studies("all", "smoke", n_images=6, time_limit=5.0)[0], eps=0.1)
    table = exact_risk.run_study(st, "smoke", root=tmp_path, progress=False)
    assert len(table) == 6 and set(table["status"]) <= {"robust", "vulnerable", "unknown"}
    attacks = exact_risk.attack_names("linf")
    assert set(attacks) <= set(table.columns)
    # every attack's broken image is vulnerable (the solver agrees with the attacks)
    for a in attacks:
        assert (table.loc[table[a], "status"] == "vulnerable").all(), a
    g = exact_risk.gap_table(table, "linf")
    assert (g["E_low"] >= 0).all() and (g["E_low"] <= g["E_high"]).all()
    # the solver's counterexamples are real: in the ball and the box, misclassified by the float32 model
    model = exact_risk.load_verified_model(st.model, "smoke", train=False, root=tmp_path)
    from lossbook.core import data

    x, _ = data.load("mnist", "test")
    rows = exact_risk.load_exact_rows(st, "smoke", tmp_path)
    for r in rows:
        assert (r["witness"] is not None) == (r["status"] == "vulnerable")
        if r["witness"] is not None:
            w = certify.decode_point(r["witness"])
            assert certify.in_feasible_set(w, x[r["index"]].reshape(-1).double().numpy(), "linf", st.eps)
            xa = torch.tensor(w, dtype=torch.float32).view(1, 1, 28, 28)  # exact: the witness is float32
            assert int(model(xa).argmax()) == r["predicted"] != r["label"]
    assert any(r["witness"] for r in rows) and exact_risk.audit_study(st, "smoke", tmp_path) == []
    # a witness moved outside the ball is caught by the audit, with the image and what is wrong
    bad = next(r for r in rows if r["witness"])
    moved = certify.decode_point(bad["witness"])
    moved[0] = 1.0 if x[bad["index"]].view(-1)[0] < 0.5 else 0.0
    from lossbook import store

    path = exact_risk.exact_path(st, "smoke", tmp_path)
    store.save(path, [{**r, "witness": certify.encode_point(moved)} if r is bad else r for r in rows],
               store.record(path)["request"])
    assert exact_risk.audit_study(st, "smoke", tmp_path) == [
        f"{st.name()}: image {bad['index']}: the witness lies outside the linf ball of radius {st.eps} or the box"]
    # a vulnerable image passed off as robust, every class "ruled out by bounds", is caught: the bounds are
    # derived again and rule out fewer classes
    forged = [{**r, "status": "robust", "by": "milp", "witness": None, "ruled_out": {"bounds": 9, "lp-dual": 0, "milp": 0},
               "delta": bad["delta"], "slack": 0.0} if r is bad else r for r in rows]
    store.save(path, forged, store.record(path)["request"])
    problems = exact_risk.audit_study(st, "smoke", tmp_path)
    assert any(p.startswith(f"{st.name()}: image {bad['index']}: robust with 9 classes ruled out by bounds, but bounds "
                            "derived afresh rule out ") for p in problems)
    # the same image passed off with every class "ruled out by an LP dual": the LPs solved afresh say otherwise
    forged = [{**r, "status": "robust", "by": "milp", "witness": None, "ruled_out": {"bounds": 0, "lp-dual": 9, "milp": 0},
               "delta": bad["delta"], "slack": 0.0} if r is bad else r for r in rows]
    store.save(path, forged, store.record(path)["request"])
    problems = exact_risk.audit_study(st, "smoke", tmp_path, lp_dual=None)
    assert any(p.startswith(f"{st.name()}: image {bad['index']}: robust with 9 classes ruled out by bounds and LP duals, "
                            "but derived afresh they rule out ") for p in problems)
    store.save(path, rows, store.record(path)["request"])
    # a second call reuses every saved result (nothing is solved again)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = exact_risk.run_study(st, "smoke", root=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert "smoke" in exact_risk.conclusions({st.name(): (st, table)}) or st.name() in exact_risk.conclusions({st.name(): (st, table)})


def test_the_committed_studies_pass_the_audit(data_available):
    """Every committed study passes ``python -m lossbook audit`` (no solver): made under today's rule, every
    witness in the ball and the box exactly with a certified margin >= 0, every robust image with a proof
    per wrong class, the outcomes table agreeing, no robust image broken by an attack."""
    found = [st for st in exact_risk.studies("cpu") if exact_risk.exact_path(st, "cpu").exists()]
    found += exact_risk.paper_net_saved_studies("cpu")  # the paper's NET-1: each curve radius and the main studies
    if not found:
        pytest.skip("no committed cpu study")
    problems = [p for st in found for p in exact_risk.audit_study(st, "cpu")]
    assert problems == []


def test_e_text_gives_a_number_or_the_range_where_images_are_unknown():
    assert exact_risk.e_text({"E_low": 0.042, "E_high": 0.042}) == "4.2"
    assert exact_risk.e_text({"E_low": 0.096, "E_high": 0.102}) == "9.6 to 10.2"


def test_the_takeaway_states_the_studies_numbers():
    """Chapter 07's takeaway box is computed from the studies: one study's FGSM E appears as it is in Table 7.2."""
    st = next(s for s in exact_risk.studies("cpu") if s.model == "mnist-mlp64-fgsm" and s.norm == "linf" and s.eps == 0.1)
    results, _ = exact_risk.chapter_studies([st], "cpu", compute=False)
    if not results:
        pytest.skip("the committed cpu study is not in this checkout")
    (_, table), = results.values()
    g = exact_risk.gap_table(table, st.norm).set_index("attack")
    text = exact_risk.takeaway(results)
    assert text.startswith("Over 1 verified studies") and f"misses {100 * g.loc['FGSM', 'E_low']:.1f} pp" in text
    assert exact_risk.takeaway({}) == "No study is available at this scale."


def test_table_7_2_names_its_attacks_in_a_column():
    """The chapter shows tables without an index, so the attack names are a column."""
    st = exact_risk.studies("cpu")[0]
    results, _ = exact_risk.chapter_studies([st], "cpu", compute=False)
    if not results:
        pytest.skip("the committed cpu study is not in this checkout")
    table = exact_risk.error_table(results)
    assert list(table.columns) == ["attack", st.name()] and "FGSM" in set(table["attack"])


def test_no_room_counts_the_undecided_images_ce_does_not_break():
    """"No room to improve" needs fewer than NO_ROOM_IMAGES images CE might miss, undecided ones included;
    the gain is the protocol's exact comparison (an interval at 0 is inconclusive, not a loss)."""
    import pandas as pd

    from lossbook.chapters import exact_risk as E
    from lossbook.core.stats import direction

    t = pd.DataFrame({"status": ["vulnerable"] * 2 + ["unknown"] * 30 + ["robust"] * 18,
                      "PGD-10 ce": [True, False] + [False] * 30 + [False] * 18})
    t["PGD-10 searched"] = t["PGD-10 ce"]
    tight = E.tighter_than_ce(t)
    assert (tight["ce_missed"], tight["ce_missed_at_most"]) == (1, 31) and not tight["no_room"]
    assert direction(tight["gain"]) == "inconclusive"
    decided = t[t["status"] != "unknown"]
    assert E.tighter_than_ce(decided)["no_room"]
    assert E.tighter_than_ce(t.drop(columns="PGD-10 searched")) is None


def test_the_paper_networks_eps_is_the_largest_with_90_percent_decided():
    curve = pd.DataFrame({"eps": [0.01, 0.02, 0.03, 0.05], "images": 40, "robust": [30, 25, 20, 5],
                          "vulnerable": [10, 12, 12, 15], "unknown": [0, 3, 8, 20],
                          "decided share": [1.0, 0.925, 0.8, 0.5], "decided 95% low": 0.0, "decided 95% high": 1.0,
                          "solver median s": 1.0, "unstable ReLUs (median)": 100.0})
    assert exact_risk.chosen_eps(curve) == 0.02  # not 0.03: 80% decided there
    assert exact_risk.chosen_eps(curve.assign(**{"decided share": 0.5})) is None
    name = "mnist-net1-at"
    radii = exact_risk.CURVE_EPS[name]
    full = pd.concat([curve] * (len(radii) // len(curve) + 1), ignore_index=True)[:len(radii)].assign(eps=radii)  # the whole curve, 90% decided early
    assert "the curve has 2 of its" in exact_risk.paper_net_sentence(name, curve[:2], None, None)
    assert "up to eps" in exact_risk.paper_net_sentence(name, full, None, None)
    assert list(exact_risk.curve_table(curve)["decided (95% interval)"])[1] == "0.93 [0.00, 1.00]"


def test_a_study_made_under_another_rule_fails_the_audit_with_what_differs(data_available, tmp_path):
    from lossbook import store

    st = replace(exact_risk.select_studies("all", "smoke", n_images=2, time_limit=5.0)[0], eps=0.05)
    exact_risk.run_study(st, "smoke", root=tmp_path, progress=False)
    path = exact_risk.exact_path(st, "smoke", tmp_path)
    request = store.record(path)["request"]
    store.save(path, store.load(path), {**request, "rule": {**request["rule"], "delta_rel": 1e-5}})
    (problem,) = exact_risk.audit_study(st, "smoke", tmp_path)
    assert problem == (f"{st.name()}: made under other settings or weights (differs in: rule.delta_rel); rerun it with "
                       f"`python -m lossbook exact --studies {st.name()}`")
    # another HiGHS version made the verdicts: the audit trusts no solver, so it checks the study all the same
    store.save(path, store.load(path), {**request, "rule": {**request["rule"], "solver": "HiGHS 0.0.1"}})
    assert exact_risk.audit_study(st, "smoke", tmp_path) == []


def test_table_7_5_counts_how_each_verdict_was_reached():
    t = _table(["vulnerable", "vulnerable", "robust", "robust", "unknown", "unknown"])
    t["by"] = ["attack", "milp", "milp", "milp", "time limit", "margin"]
    t["milp_proofs"] = [0, 0, 0, 2, 0, 0]
    t["float32_fooled"] = ["yes", "no", "-", "-", "-", "-"]
    row = exact_risk.proof_table({"s": (None, t)}).iloc[0]
    assert (row["vulnerable: attack's witness"], row["vulnerable: solver's witness"]) == (1, 1)
    assert (row["robust: float64 proofs only"], row["robust: some class by MILP"]) == (1, 1)
    assert (row["unknown: time limit"], row["unknown: within delta"]) == (1, 1)
    assert row["witnesses the float32 model also misclassifies"] == "1 of 2"


def test_table_7_6_counts_the_verdicts_that_changed_under_the_new_rule(tmp_path):
    from lossbook import store

    store.save(tmp_path / "smoke" / "decisions-before-audit-rule.csv",
               pd.DataFrame({"study": "s", "index": [0, 1, 2], "status": ["robust", "robust", "vulnerable"], "by": "milp"}),
               {"what": "test"})
    t = _table(["robust", "unknown", "vulnerable"])
    row = exact_risk.decision_changes({"s": (None, t)}, "smoke", tmp_path).iloc[0]
    assert (row["images"], row["changed"], row["which"]) == (3, 1, "robust -> unknown: 1")
    assert exact_risk.decision_changes({"s": (None, t)}, "smoke", tmp_path / "nowhere") is None
    # the same count for any two sets of verdicts: only the images in both are compared
    old = pd.Series(["unknown", "unknown", "robust", "vulnerable"], index=[3, 5, 7, 9])
    new = pd.Series(["robust", "unknown", "unknown", "vulnerable", "robust"], index=[3, 5, 7, 9, 11])
    assert exact_risk.verdict_changes(old, new) == {"images": 4, "changed": 2,
                                                    "which": "robust -> unknown: 1, unknown -> robust: 1"}
    assert exact_risk.backward_changes("smoke", tmp_path) is None  # no earlier NET-1 verdicts kept there


def test_the_paper_network_sentence_says_when_every_attack_ties_and_names_the_best_when_not():
    name = "mnist-net1-at"
    radii = exact_risk.CURVE_EPS[name]
    curve = pd.DataFrame({"eps": radii[:2], "images": 40, "robust": [40, 30], "vulnerable": 0, "unknown": [0, 10],
                          "decided share": [1.0, 0.75], "decided 95% low": 0.0, "decided 95% high": 1.0,
                          "solver median s": 1.0, "unstable ReLUs (median)": 100.0})
    st = exact_risk.Study(name, "linf", radii[0], 4, 60.0)
    table = pd.DataFrame({"status": ["vulnerable", "vulnerable", "unknown", "robust"], "by": "milp",
                          "seconds": 1.0, "unstable": 1, "stable": 9,
                          "FGSM": [True, False, False, False], "PGD-10 ce": [True, False, False, False],
                          "PGD-10 searched": [True, False, False, False]})
    tied = exact_risk.paper_net_sentence(name, curve, st, table)
    assert "All 3 attacks find the same R'' = 0.250" in tied and "E = 25.0 to 50.0 pp for every one" in tied
    assert ("R in [0.500, 0.750] on 4 images (75.0% of them decided, below the 90% that the 40-image curve met: on "
            "200 images the criterion does not hold; the solver took") in tied
    assert "half a grey level" not in tied  # eps 0.005 is more than 0.5/255
    assert "; the solver took a median 1.0 s and at most 1 s on the images no attack broke)" in tied
    low = exact_risk.paper_net_sentence(name, curve.assign(eps=[0.001, 0.002]), replace(st, eps=0.001), table)
    assert "eps 0.001 is less than half a grey level (0.5/255)" in low
    table.loc[1, "PGD-10 searched"] = True  # the searched loss breaks the second vulnerable image
    text = exact_risk.paper_net_sentence(name, curve, st, table)
    assert "All 3" not in text and "the best single attack, PGD-10 searched, misses 0.0 to 25.0 pp" in text
    by_study = exact_risk.conclusions({"tied": (st, table.assign(**{"PGD-10 searched": table["FGSM"]})), "not": (st, table)})
    assert "all 3 attacks tie at E = 25.0 to 50.0 pp" in by_study
    assert "the best single attack, PGD-10 searched, misses 0.0 to 25.0 pp; FGSM (ATRAS's evaluation) misses 25.0 to 50.0 pp" in by_study


def test_the_scope_note_reads_the_verified_radii():
    assert exact_risk.scope_note("smoke").endswith("none of AutoLoss-AR's CNNs is verified at this scale.")
    # the committed NET-1 curves decide 90% up to eps 0.03 (AT) and 0.001 (ST); the paper arm judges l_inf at
    # 0.177 and 0.047 (chapter 3's summary): 5.9 and 47 times larger
    curves = {n: c for n, (c, _, _) in exact_risk.paper_net_results("cpu").items()}
    assert exact_risk.chosen_eps(curves["mnist-net1-at"]) == 0.03 and exact_risk.chosen_eps(curves["mnist-net1-st"]) == 0.001
    assert exact_risk.radius_ratio("mnist-net1-at", curves["mnist-net1-at"]) == pytest.approx(
        exact_risk.arm_eps("mnist-net1-at") / 0.03)
    assert "only at radii 6 to 47 times smaller than the paper arm's eps" in exact_risk.scope_note("cpu")
    assert exact_risk.radius_ratio("mnist-net1-at", curves["mnist-net1-at"].iloc[:2]) is None  # an unfinished curve


def test_the_float32_sentence_counts_the_robust_verdicts_that_carry_over(monkeypatch):
    st = exact_risk.studies("cpu")[0]
    net = exact_risk.Study("mnist-net1-at", "linf", 0.03, 200, 60.0)
    other = exact_risk.Study("mnist-net1-at", "linf", 0.01, 200, 60.0)  # every verdict carries: its ratio is not quoted
    monkeypatch.setattr(exact_risk, "paper_net_saved_studies", lambda scale, root=None: [net, other])
    checks = {st.name(): {"robust": 10, "carried": 1, "delta_classes": 0, "median_ratio": 2.4},
              net.name(): {"robust": 20, "carried": 15, "delta_classes": 0, "median_ratio": 107.6},
              other.name(): {"robust": 5, "carried": 5, "delta_classes": 0, "median_ratio": float("nan")}}
    monkeypatch.setattr(exact_risk, "float32_checks", lambda studies, scale, root=None: checks)
    text = exact_risk.float32_sentence({"a": (st, None)}, "cpu")
    assert "proves it for 21 of the 35 robust images of 3 studies, 20 of 25 on NET-1, where bounds" in text
    assert "through the verdict's delta" not in text
    checks[net.name()]["delta_classes"] = 3
    assert "than the bound (3 classes through the verdict's delta instead). On the other robust images" in \
        exact_risk.float32_sentence({"a": (st, None)}, "cpu")
    assert "which exceeds delta there by a median 2 to 108 times per study" in text
    checks = {st.name(): {"robust": 3, "carried": 3, "delta_classes": 0, "median_ratio": float("nan")}}
    assert exact_risk.float32_sentence({"a": (st, None)}, "cpu").endswith("of the 3 robust images of 1 studies.")
    checks = {}
    assert exact_risk.float32_sentence({}, "cpu") == ""


def test_the_float32_check_is_kept_for_the_verdicts_it_was_made_from(tmp_path, monkeypatch):
    """Saved once per set of verdict files; a changed verdict file (another hash), or the same rows made for
    another request (other weights or rule), makes it again."""
    from lossbook import store

    st = exact_risk.Study("mnist-mlp64-fgsm", "l2", 1.0, 4, 120.0)
    calls = []
    monkeypatch.setattr(exact_risk, "float32_check", lambda study, scale, root=None: calls.append(study) or {"robust": 1})
    store.save(exact_risk.exact_path(st, "cpu", tmp_path), [{"index": 0}], {"v": 1})
    assert exact_risk.float32_checks([st], "cpu", tmp_path) == {st.name(): {"robust": 1}}
    exact_risk.float32_checks([st], "cpu", tmp_path)
    assert len(calls) == 1
    store.save(exact_risk.exact_path(st, "cpu", tmp_path), [{"index": 1}], {"v": 1})
    exact_risk.float32_checks([st], "cpu", tmp_path)
    assert len(calls) == 2
    store.save(exact_risk.exact_path(st, "cpu", tmp_path), [{"index": 1}], {"v": 2})
    exact_risk.float32_checks([st], "cpu", tmp_path)
    assert len(calls) == 3


def test_the_l2_sentence_says_what_a_longer_limit_decided(tmp_path, monkeypatch):
    from lossbook import store

    st = exact_risk.Study("mnist-mlp64-fgsm", "l2", 1.0, 4, 120.0)
    rows = [{"index": 0, "status": "robust", "by": "milp", "unstable": 10, "ruled_out": {"bounds": 9}},
            {"index": 1, "status": "vulnerable", "by": "attack", "unstable": 0, "ruled_out": {}},
            {"index": 2, "status": "robust", "by": "milp", "unstable": 20, "ruled_out": {"milp": 9}},
            {"index": 3, "status": "unknown", "by": "time limit", "unstable": 30, "ruled_out": {"bounds": 2, "lp-dual": 1},
             "open_class": {"class": 4, "tried": 1, "of": 6, "bound": 0.3, "nodes": 12}},
            {"index": 4, "status": "unknown", "by": "time limit", "unstable": 40, "ruled_out": {"bounds": 3},
             "open_class": {"class": 2, "tried": 5, "of": 5, "bound": -4.4, "nodes": 1}}]  # a late class: not quoted
    monkeypatch.setattr(exact_risk, "load_exact_rows", lambda study, scale, root=None: rows)
    monkeypatch.setattr(exact_risk, "study_dir", lambda scale, root=None: tmp_path)
    results = {st.name(): (st, pd.DataFrame({"index": [0, 1, 2, 3, 4]}))}
    text = exact_risk.l2_sentence(results, "cpu")
    assert text.startswith(f"The l_2 study {st.name()} decides 3 of its 5 images (60%) within 120 s each. That is short")
    assert "bounds and LP duals rule out a median of 3 of 9 wrong classes" in text
    assert ("on 1 of 2 images that is the first class it tries, with all the time left, and when it stops its bound on "
            "f_c - f_y is still above 0 on 1 of them (median +0.30; robust needs -delta), after a median of 12 "
            "branch-and-bound nodes. The undecided images keep a median of 35 unstable ReLUs (the solved ones 15).") in text
    earlier = pd.DataFrame({"study": st.name(), "index": [0, 1, 2, 3, 4],
                            "status": ["unknown", "vulnerable", "unknown", "unknown", "unknown"]})
    store.save(tmp_path / exact_risk.L2_EARLIER, earlier, {"what": "test"})
    text = exact_risk.l2_sentence(results, "cpu")
    assert ("; at 30 s it decided 1, and the longer limit decided 2 of the 4 images left open then (unknown -> robust: 2), "
            "with no decided verdict reversed. That is short") in text
    assert "at 30 s" not in exact_risk.l2_sentence({st.name(): (replace(st, time_limit=30.0), results[st.name()][1])}, "cpu")
