import pytest

from lossbook.chapters.registry import CHAPTERS
from lossbook.publish.build import available_chapters, check_links, write_toc


def test_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "index.html").write_text('<a href="chapters/a.html#sec">ok</a><a href="chapters/b.html">gone</a>'
                                         '<a href="https://example.org">external</a><img src="_images/x.png">')
    (tmp_path / "chapters" / "a.html").write_text('<h1 id="sec">A</h1><a href="../index.html#nope">bad anchor</a>')
    problems = check_links(tmp_path)
    assert sorted(problems) == sorted(["index.html: missing chapters/b.html", "index.html: missing _images/x.png",
                                       "chapters/a.html: no anchor #nope in ../index.html"])
    (tmp_path / "chapters" / "b.html").write_text("<p>B</p>")
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "x.png").write_bytes(b"png")
    (tmp_path / "chapters" / "a.html").write_text('<h1 id="sec">A</h1><a href="../index.html">fine</a>')
    assert check_links(tmp_path) == []


def test_chapters_are_in_reading_order_and_the_toc_lists_them(monkeypatch, tmp_path):
    import lossbook.publish.build as book

    assert list(CHAPTERS) == sorted(CHAPTERS)
    assert available_chapters() == [c for c in CHAPTERS if c in available_chapters()]
    monkeypatch.setattr(book, "BOOK_DIR", tmp_path)
    write_toc(["01_toy_inconsistency", "02_training"])
    toc = (tmp_path / "_toc.yml").read_text().splitlines()
    assert toc[1:] == ["format: jb-book", "root: intro", "chapters:", "- file: glance", "- file: notation",
                       "- file: chapters/01_toy_inconsistency", "- file: chapters/02_training", "- file: teaching",
                       "- file: reproducing", "- file: references"]
    write_toc(["02_training", "03_gp_search"])  # Question 1's protocol comes just before its chapter
    toc = (tmp_path / "_toc.yml").read_text().splitlines()
    assert toc[6:9] == ["- file: chapters/02_training", "- file: protocol_q1", "- file: chapters/03_gp_search"]
    write_toc(["06_atras_sweep"])
    assert (tmp_path / "_toc.yml").read_text().splitlines()[6:8] == ["- file: protocol_atras", "- file: chapters/06_atras_sweep"]


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if CHAPTERS[c].protocol])
def test_each_protocol_page_is_older_than_every_result_it_rules(chapter):
    """A protocol page was committed before the first result it judges (each page says so)."""
    import subprocess

    from lossbook.config import REPO_ROOT

    def first_commit(path: str) -> int | None:
        out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%ct", "--", path], cwd=REPO_ROOT,
                             capture_output=True, text=True)
        times = [int(t) for t in out.stdout.split()]
        return min(times) if out.returncode == 0 and times else None

    c = CHAPTERS[chapter]
    assert (REPO_ROOT / "book" / f"{c.protocol}.md").exists()
    protocol = first_commit(f"book/{c.protocol}.md")
    if protocol is None:
        pytest.skip("no git history here (or the page is not committed yet)")
    results = first_commit(c.protocol_results)
    assert results is None or protocol < results


def _arm_rows():
    """Two judged settings of the paper arm, as ``paper_arm.summary_row`` writes them."""
    common = {"model_scale": "paper", "model_epochs": 160, "model_clean_acc": 0.989, "table_iii_eps": 0.07,
              "table_iii_ce_risk": 0.97, "eps_rule": "calibrated to CE R'' = 0.70", "runs": 5, "heldout_images": 1000,
              "best_pretty": "-p", "best_formula": "Neg(p)", "uses_label": False}
    return [{**common, "setting": "mnist-net1-st-linf", "eps": 0.047, "runs_beating_ce": 4, "paper_gain_pp": 1.8,
             "insample_gain_pp": 1.0, "heldout_gain_pp": 0.4, "ci_low": -0.2, "ci_high": 1.0, "only_searched": 10,
             "only_ce": 6, "p_value": 0.45, "direction": "inconclusive", "size": "smaller than the paper's",
             "heldout_gain_pp_pgd100": 0.1, "ci_low_pgd100": -0.5, "ci_high_pgd100": 0.7, "only_searched_pgd100": 8,
             "only_ce_pgd100": 7, "p_value_pgd100": 1.0, "direction_pgd100": "inconclusive"},
            {**common, "setting": "mnist-net1-at-l2", "eps": 1.8, "runs_beating_ce": 5, "paper_gain_pp": 1.0,
             "insample_gain_pp": 3.0, "heldout_gain_pp": 2.5, "ci_low": 1.1, "ci_high": 3.9, "only_searched": 30,
             "only_ce": 5, "p_value": 1e-5, "direction": "reproduced", "size": "larger than the paper's",
             "heldout_gain_pp_pgd100": 2.0, "ci_low_pgd100": 0.8, "ci_high_pgd100": 3.2, "only_searched_pgd100": 25,
             "only_ce_pgd100": 5, "p_value_pgd100": 1e-4, "direction_pgd100": "reproduced"}]


def test_the_introduction_answers_question_1_from_the_paper_arm(tmp_path, monkeypatch):
    from lossbook.chapters import gp_search as grid
    from lossbook.chapters import paper_arm
    from lossbook.publish import build as book

    monkeypatch.setattr(grid, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(paper_arm, "RESULTS_DIR", tmp_path)
    book.write_intro("cpu")
    assert "No setting of the paper arm has been judged yet" in (book.BOOK_DIR / "intro.md").read_text()
    paper_arm.write_summary(_arm_rows(), paper_arm.ARMS["paper"])
    grid.write_summary([{"setting": "mnist-net1-st-linf", "heldout_gain_pp": 0.4, "ci_low": -0.2, "ci_high": 1.0,
                         "verdict": "inconclusive", "paper_gain_pp": 1.8}], grid.PLANS["cpu"])
    book.write_intro("cpu")
    text = (book.BOOK_DIR / "intro.md").read_text()
    assert ("In the paper arm (2 of 24 settings judged; 22 not judged yet), the best searched loss beats CE on "
            "held-out images under PGD-10 in 1 settings, loses in 0, and is inconclusive in 1; after Holm's correction "
            "1 gains and 0 losses remain. The mean held-out gain over the judged settings is +1.45 pp") in text
    assert "earlier grid" in text and "1 inconclusive" in text and book.QUESTION_1_MARKER not in text


def test_results_at_a_glance_counts_verdicts_and_says_what_was_not_run(tmp_path, monkeypatch):
    from lossbook.chapters import paper_arm
    from lossbook.publish import glance

    monkeypatch.setattr(paper_arm, "RESULTS_DIR", tmp_path)
    paper_arm.write_summary(_arm_rows(), paper_arm.ARMS["paper"])
    t = glance.claims_table("cpu")
    q1 = t[t["claim"].str.startswith("Q1")]
    assert len(q1) == 24 and (q1["verdict"] == glance.NOT_RUN).sum() == 22
    row = q1[q1["claim"].str.contains("mnist-net1-at-l2")].iloc[0]
    # Holm over the arm's 24 planned settings, not the 2 judged ones; the pick's runs and in-sample gain beside
    assert row["ours"].startswith("+2.5 pp [+1.1, +3.9] (held-out; Holm p 0.00024; best of 5 reduced-budget runs, "
                                  "in-sample +3.00 pp; paper model, 160 epochs")
    assert row["the paper's number"] == "+1.0 pp (in-sample, full budget)" and row["verdict"] == "reproduced" and row["scale"] == "paper arm"
    runs = t[t["claim"].str.startswith('"the success rate of searching')].iloc[0]  # the paper's words, quoted
    assert runs["ours"] == ("per run: 9 of 10 unseeded runs beat CE on their search images; per setting: the selected "
                            "run does in 2 of 2, some run in 2, every run in 1 (in-sample, descriptive)")
    assert runs["verdict"] == glance.DESCRIPTIVE  # the protocol page gives the in-sample success rate no verdict
    page = glance.markdown("cpu")
    assert runs["ours"] in paper_arm.answer(paper_arm.load_summary("paper"))  # chapter 03's answer says the same
    assert "; the paper's gain inside our interval)" in row["ours"] or "; ours " in row["ours"]
    papers = t[t.apply(glance._section, axis=1) == glance.SECTIONS[0]]
    assert f"- {glance.SECTIONS[0]}: **reproduced** {(papers['verdict'] == 'reproduced').sum()}, " in page
    assert f"**{glance.NOT_RUN}** {(papers['verdict'] == glance.NOT_RUN).sum()}." in page
    assert page.count(f"<{paper_arm.ANSWER_TARGET}>`") == 25  # each links to chapter 03's answer section
    assert "FGSM measures" not in page  # not a claim of ATRAS (it names FGSM-only evaluation as a limitation)


def test_teaching_page_shows_measured_times_and_says_what_was_not_measured(tmp_path):
    import pandas as pd

    from lossbook import store
    from lossbook.publish import teaching

    page = teaching.markdown(tmp_path)
    assert page.count("(measured: not measured)") == len(teaching.commands()) == sum(len(b.commands) for b in teaching.LESSON)
    assert f"A {sum(b.minutes for b in teaching.LESSON)}-minute lesson" in page and "## 0-10 min: " in page
    assert sum(b.minutes for b in teaching.LESSON) == 90
    cmds = teaching.commands()
    times = pd.DataFrame({"command": cmds, "seconds": [12.0 + i for i in range(len(cmds))],
                          "machine": "2 CPU cores", "measured": "2026-11-22"})
    store.save(teaching.times_path(tmp_path), times, teaching._request())
    page = teaching.markdown(tmp_path)
    assert "not measured" not in page and f"`.venv/bin/python -m lossbook {cmds[0]}` (measured: 12 s)" in page
    assert "measured 2026-11-22 on 2 CPU cores" in page
    store.save(teaching.times_path(tmp_path), times.iloc[:1], {"commands": ["another plan"]})
    assert "not measured on this checkout" in teaching.markdown(tmp_path)  # times of another plan are not shown


def test_the_lesson_runs_as_written():
    """Complete commands (the interpreter, the data variable), where output lands, an answer to every
    question in a closed dropdown, and the warning that smoke numbers can reverse the book's."""
    from lossbook.publish import teaching

    page = teaching.markdown()
    runs = [line for line in page.splitlines() if line.startswith("- **Run:** `")]
    assert runs and all(line.startswith("- **Run:** `.venv/bin/python -m lossbook ") for line in runs)
    assert "export LOSSBOOK_DATA=" in page and "make setup" in page and "runs/<chapter>.html" in page
    assert page.count(":class: dropdown") == page.count("- **Ask:** ") == len(teaching.LESSON)
    assert all(len(b.answer) > 100 for b in teaching.LESSON)
    assert ":::{warning}\nSmoke runs can reverse the book's numbers." in page


def test_glance_exact_rows_from_the_committed_studies():
    from lossbook.chapters import exact_risk

    rows = exact_risk.glance_rows("cpu")
    saved = [st for st in exact_risk.studies("cpu") if exact_risk.load_study(st, "cpu") is not None]
    saved += [st for _, st, t in exact_risk.paper_net_results("cpu").values() if t is not None]  # the paper's NET-1
    assert not [r for r in rows if r["paper"] == "ATRAS"]  # ATRAS makes no claim about FGSM's error
    tighter = [r for r in rows if r["paper"] == "AutoLoss-AR"]
    assert len(tighter) == len(saved) and all("McNemar p = " in r["ours"] for r in tighter)


def test_the_reproducing_inventory_describes_every_committed_summary():
    """Every committed summary (grid and paper arm) gets a row with its scale and what made it: the CI
    failure of a paper-arm summary without a 'scale' key in its request must not come back."""
    from lossbook.config import RESULTS_DIR
    from lossbook.publish.build import results_inventory

    rows = {r["result"]: r for r in results_inventory()}
    summaries = sorted(p.relative_to(RESULTS_DIR.parent).as_posix() for p in RESULTS_DIR.glob("search/*/summary.csv")
                       if "smoke" not in p.parent.name)
    assert summaries and all(s in rows for s in summaries)
    arm = rows["results/search/paper-arm/summary.csv"]
    assert arm["scale"] == "paper" and "mnist paper models" in arm["settings"] and "of 24 settings" in arm["outcome"]
    for other in ("lexicase", "long-at"):  # the other arms are listed too, with their own number of settings
        path = f"results/search/{other}-arm/summary.csv"
        if path in summaries:
            assert f"of {12 if other == 'lexicase' else 6} settings" in rows[path]["outcome"]


def test_an_executed_chapter_becomes_a_page_without_the_hidden_code(tmp_path):
    """`run` writes an HTML page beside the notebook: outputs kept, code the book hides left out."""
    import nbformat

    from lossbook.publish.build import export_html

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"),
                nbformat.v4.new_code_cell("secret_setup = 1", metadata={"tags": ["hide-input"]},
                                          outputs=[nbformat.v4.new_output("stream", text="visible result 42")]),
                nbformat.v4.new_code_cell("scale = 'smoke'", metadata={"tags": ["parameters", "hide-cell"]}),
                nbformat.v4.new_code_cell("shown_code = 2")]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, str(path))
    page = export_html(path).read_text()
    assert export_html(path) == tmp_path / "chapter.html"
    assert "A chapter" in page and "visible result 42" in page and "shown_code" in page
    assert "secret_setup" not in page and "scale = " not in page


def test_the_glance_page_sorts_claims_and_draws_question_1(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from lossbook.chapters import paper_arm
    from lossbook.chapters.gp_search import paper_gain
    from lossbook.config import SETTINGS
    from lossbook.publish import glance, plots

    monkeypatch.setattr(paper_arm, "RESULTS_DIR", tmp_path)
    paper_arm.write_summary(_arm_rows(), paper_arm.ARMS["paper"])
    summary = paper_arm.with_holm(paper_arm.load_summary("paper"))
    fig = plots.q1_panel(summary, list(SETTINGS), {n: paper_gain(n) for n in SETTINGS})
    cells = fig.axes[0].patches
    assert len(cells) == 24
    colours = [matplotlib.colors.to_hex(c.get_facecolor()) for c in cells]
    assert colours.count(plots.VERDICT_COLORS["not run"]) == 22  # the two judged settings are coloured
    page = glance.markdown("cpu", q1_figure="figures/q1_panel.png")
    heads = [line for line in page.splitlines() if line.startswith("## ")]
    assert heads == ["## Question 1: does a searched loss beat cross-entropy? (AutoLoss-AR)",
                     *[f"## {s}" for s in glance.SECTIONS]]
    assert ":::{figure} figures/q1_panel.png" in page and ":alt: A grid of the 24 settings" in page
    assert ":::{admonition} Question 1, setting by setting (24 rows)\n:class: dropdown" in page
    t = glance.claims_table("cpu")
    no_room = t[t["verdict"] == glance.NO_ROOM]
    assert len(no_room)  # the committed studies have such rows
    for _, row in no_room.iterrows():  # reported under what could not be compared
        assert glance._section(row) == glance.SECTIONS[2]
        assert "CE misses 0 vulnerable" in row["ours"] or "CE misses 1 vulnerable" in row["ours"]


def test_the_reproducing_page_keeps_its_file_list_one_click_away(tmp_path, monkeypatch):
    from lossbook.publish import build as book

    monkeypatch.setattr(book, "BOOK_DIR", tmp_path)
    (tmp_path / "reproducing_head.md").write_text("# Reproducing\n")
    book.write_reproducing()
    page = (tmp_path / "reproducing.md").read_text()
    n = len(book.results_inventory())
    assert f"Generated from the result files at build time: {n} results, " in page
    assert f":::{{admonition}} All {n} result files\n:class: dropdown" in page and page.rstrip().endswith(":::")
    assert page.count("\n| `results/") == n


def test_every_figure_cell_carries_a_numbered_caption_a_label_and_alt_text():
    """Figures are myst-nb cell-metadata figures (cross-referenceable, with alt text): no bold caption
    paragraph stands in for one, and each label is ``fig-<chapter>-<k>`` for its "Figure <chapter>.<k>"."""
    import json
    import re

    from lossbook.config import REPO_ROOT

    names = []
    for path in sorted((REPO_ROOT / "nbs").glob("*.ipynb")):
        chapter = int(path.name[:2])
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"]).strip()
            assert not (cell["cell_type"] == "markdown" and text.startswith("**Figure")), f"{path.name}: {text[:60]}"
            meta = cell.get("metadata", {}).get("mystnb", {})
            if "figure" in meta:
                number = re.match(r"\*\*Figure (\d+)\.(\d+)", meta["figure"]["caption"])
                assert number and int(number[1]) == chapter, f"{path.name}: {meta['figure']['caption'][:60]}"
                assert meta["figure"]["name"] == f"fig-{number[1]}-{number[2]}"
                assert len(meta.get("image", {}).get("alt", "")) >= 10, f"{path.name}: {meta['figure']['name']} has no alt text"
                names.append(meta["figure"]["name"])
    assert len(names) == len(set(names)) and len(names) >= 20, names
