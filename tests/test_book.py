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
    assert toc[1:] == ["format: jb-book", "root: intro", "chapters:", "- file: chapters/01_toy_inconsistency",
                       "- file: chapters/02_training", "- file: reproducing"]
