from lossbook.book import CHAPTERS, available_chapters, check_links, write_toc


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
    import lossbook.book as book

    assert list(CHAPTERS) == sorted(CHAPTERS)
    assert available_chapters() == [c for c in CHAPTERS if c in available_chapters()]
    monkeypatch.setattr(book, "BOOK_DIR", tmp_path)
    write_toc(["01_toy_inconsistency", "02_training"])
    toc = (tmp_path / "_toc.yml").read_text().splitlines()
    assert toc[1:] == ["format: jb-book", "root: intro", "chapters:", "- file: glance", "- file: chapters/01_toy_inconsistency",
                       "- file: chapters/02_training", "- file: teaching", "- file: reproducing"]


def test_the_introduction_answers_question_1_from_the_summary(tmp_path, monkeypatch):
    import pandas as pd

    from lossbook import book, grid, store

    monkeypatch.setattr(grid, "RESULTS_DIR", tmp_path)
    rows = [{"setting": "mnist-net1-st-linf", "heldout_gain_pp": 0.4, "ci_low": -0.2, "ci_high": 1.0,
             "verdict": "inconclusive", "paper_gain_pp": 1.8},
            {"setting": "mnist-net1-at-l2", "heldout_gain_pp": 2.5, "ci_low": 1.1, "ci_high": 3.9,
             "verdict": "reproduced", "paper_gain_pp": 1.0}]
    grid.write_summary(rows, grid.PLANS["cpu"])
    book.write_intro("cpu")
    text = (book.BOOK_DIR / "intro.md").read_text()
    assert "Of the 2 of 24 settings searched and judged on held-out images, the paper's claim (a searched loss beats " \
           "CE) is 1 reproduced, 0 not reproduced, 1 inconclusive; the other 22 settings are not run" in text
    assert "+2.5 points (mnist-net1-at-l2, 95% interval [+1.1, +3.9])" in text and book.QUESTION_1_MARKER not in text
    assert isinstance(store.load(grid.summary_path(grid.PLANS["cpu"])), pd.DataFrame)


def test_results_at_a_glance_counts_verdicts_and_says_what_was_not_run(tmp_path, monkeypatch):
    from lossbook import glance, grid

    monkeypatch.setattr(grid, "RESULTS_DIR", tmp_path)
    rows = [{"setting": "mnist-net1-st-linf", "eps": 0.07, "runs": 3, "runs_beating_ce": 2, "heldout_gain_pp": 0.4,
             "ci_low": -0.2, "ci_high": 1.0, "verdict": "inconclusive", "paper_gain_pp": 1.8},
            {"setting": "mnist-net1-at-l2", "eps": 2.1, "runs": 3, "runs_beating_ce": 3, "heldout_gain_pp": 2.5,
             "ci_low": 1.1, "ci_high": 3.9, "verdict": "reproduced", "paper_gain_pp": 1.0}]
    grid.write_summary(rows, grid.PLANS["cpu"])
    t = glance.claims_table("cpu")
    q1 = t[t["claim"].str.startswith("Q1")]
    assert len(q1) == 24 and (q1["verdict"] == glance.NOT_RUN).sum() == 22
    row = q1[q1["claim"].str.contains("mnist-net1-at-l2")].iloc[0]
    assert row["ours"].startswith("+2.5 pp [+1.1, +3.9]") and row["the paper's number"] == "+1.0 pp"
    runs = t[t["claim"].str.startswith("every GP run")].iloc[0]
    assert runs["ours"].startswith("5 of 6 runs") and runs["verdict"] == "not reproduced"
    page = glance.markdown("cpu")
    assert f"**reproduced** {(t['verdict'] == 'reproduced').sum()}," in page
    assert f"**{glance.NOT_RUN}** {(t['verdict'] == glance.NOT_RUN).sum()}." in page
    assert page.count("(chapters/03_gp_search.ipynb)") == 25


def test_teaching_page_shows_measured_times_and_says_what_was_not_measured(tmp_path):
    import pandas as pd

    from lossbook import store, teaching

    page = teaching.markdown(tmp_path)
    assert page.count("(measured: not measured)") == len(teaching.commands()) == sum(len(b.commands) for b in teaching.LESSON)
    assert f"A {sum(b.minutes for b in teaching.LESSON)}-minute lesson" in page and "## 0-10 min: " in page
    assert sum(b.minutes for b in teaching.LESSON) == 90
    cmds = teaching.commands()
    times = pd.DataFrame({"command": cmds, "seconds": [12.0 + i for i in range(len(cmds))],
                          "machine": "2 CPU cores", "measured": "2026-11-22"})
    store.save(teaching.times_path(tmp_path), times, teaching._request())
    page = teaching.markdown(tmp_path)
    assert "not measured" not in page and f"`python -m lossbook {cmds[0]}` (measured: 12 s)" in page
    assert "measured 2026-11-22 on 2 CPU cores" in page
    store.save(teaching.times_path(tmp_path), times.iloc[:1], {"commands": ["another plan"]})
    assert "not measured on this checkout" in teaching.markdown(tmp_path)  # times of another plan are not shown


def test_glance_exact_rows_from_the_committed_studies():
    from lossbook import gap, glance

    rows = glance._exact_rows("cpu")
    saved = [st for st in gap.studies("cpu") if gap.load_study(st, "cpu") is not None]
    fgsm = [r for r in rows if r["paper"] == "ATRAS"]
    assert len(fgsm) == sum(st.norm == "linf" for st in saved)  # FGSM is an l_inf attack
    assert all("FGSM misses E = " in r["ours"] and r["verdict"] in ("not reproduced", "inconclusive") for r in fgsm)
    tighter = [r for r in rows if r["paper"] == "AutoLoss-AR"]
    assert len(tighter) == len(saved) and all("McNemar p = " in r["ours"] for r in tighter)
