"""Build the book: execute each chapter with papermill at a scale, then build the HTML (Jupyter Book 1).

``python -m lossbook book`` renders from the committed results (each chapter loads its result files
and only computes what is missing). ``--recompute`` recomputes at the chosen scale instead.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import matplotlib

from lossbook import store
from lossbook.chapters import gp_search, paper_arm
from lossbook.chapters.gp_search import paper_gain
from lossbook.chapters.registry import CHAPTERS, check_relations, convert, validate
from lossbook.config import REPO_ROOT, SCALES, SETTINGS, check_choice
from lossbook.core.train import saved_models
from lossbook.publish import glance, plots, teaching

NBS_DIR = REPO_ROOT / "nbs"
BOOK_DIR = REPO_ROOT / "book"
CHAPTER_DIR = BOOK_DIR / "chapters"  # executed notebooks (generated, not committed)

def available_chapters() -> list[str]:
    """The registry's chapters whose notebook exists, in reading order."""
    return [c for c in CHAPTERS if (NBS_DIR / f"{c}.ipynb").exists()]


def run_chapter(name: str, scale: str, recompute: bool = False, out_dir: Path = CHAPTER_DIR,
                extra: dict | None = None, cell_timeout: int | None = None) -> Path:
    """Execute ``nbs/<name>.ipynb`` with papermill into ``out_dir`` and return the output path
    (``cell_timeout``: seconds a cell may take, none by default)."""
    import papermill as pm

    check_choice("chapter", name, available_chapters())
    extra = {k: convert(name, k, v) if isinstance(v, str) else validate(name, k, v) for k, v in (extra or {}).items()}
    params = {"scale": validate(name, "scale", scale), "recompute": recompute, **extra}
    check_relations(name, params)  # before the kernel starts: one line, not a notebook traceback
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    with _kernel_env():
        pm.execute_notebook(str(NBS_DIR / f"{name}.ipynb"), str(out), parameters=params, cwd=str(NBS_DIR),
                            progress_bar=False, kernel_name="python3", execution_timeout=cell_timeout)
    _remove_injected_cell(out)
    return out


def export_html(notebook: Path) -> Path:
    """The executed chapter as one HTML page beside it, without the code the book hides: something a
    student opens in a browser, no Jupyter needed. Returns the page's path."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = ("remove-cell", "hide-cell", "injected-parameters")
    c.TagRemovePreprocessor.remove_input_tags = ("remove-input", "hide-input")
    body, _ = HTMLExporter(config=c).from_notebook_node(nbformat.read(str(notebook), as_version=4))
    out = Path(notebook).with_suffix(".html")
    out.write_text(body)
    return out


def _remove_injected_cell(path: Path) -> None:
    """Papermill's injected-parameters cell is kept in the notebook but removed from the page: the
    chapter's banner already shows every parameter once."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, str(path))


@contextlib.contextmanager
def _kernel_env():
    """The kernel's environment for a static chapter: matplotlib's inline backend (figures become
    images, whatever MPLBACKEND the caller set) and no tqdm widgets (noise in static HTML)."""
    saved = {k: os.environ.get(k) for k in ("MPLBACKEND", "TQDM_DISABLE")}
    os.environ.pop("MPLBACKEND", None)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def install_mathjax() -> None:
    """Copy a MathJax 2.7 (from the ``jupyter-server-mathjax`` package) into ``book/_mathjax/``, a
    static path of the book (not ``_static``: Jupyter Book would load every .js there as a script),
    so that math renders without internet."""
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = BOOK_DIR / "_mathjax" / "mathjax"
    if not (dst / "MathJax.js").exists():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def write_toc(chapters: list[str]) -> None:
    """``_toc.yml``: introduction, results at a glance, notation, the chapters that exist (each chapter's
    protocol page, where the registry names one, just before it), the lesson, the Reproducing page, the
    references."""
    lines = ["# generated by `python -m lossbook book`", "format: jb-book", "root: intro", "chapters:", "- file: glance",
             "- file: notation"]
    for c in chapters:
        protocol = CHAPTERS[c].protocol if c in CHAPTERS else None
        lines += [f"- file: {protocol}"] if protocol else []
        lines += [f"- file: chapters/{c}"]
    lines += ["- file: teaching", "- file: reproducing", "- file: references"]
    (BOOK_DIR / "_toc.yml").write_text("\n".join(lines) + "\n")


def build(scale: str = "cpu", recompute: bool = False, chapters: list[str] | None = None,
          execute: bool = True) -> Path:
    """Execute the chapters (unless ``execute=False``) and build the HTML; returns ``index.html``."""
    check_choice("scale", scale, SCALES)
    chapters = chapters or available_chapters()
    if execute:
        for name in chapters:
            t0 = time.perf_counter()
            run_chapter(name, scale, recompute)
            print(f"executed {name} at scale {scale} ({time.perf_counter() - t0:.0f}s)", flush=True)
    write_toc(chapters)
    write_reproducing()
    write_intro()
    write_glance(scale)
    write_teaching()
    install_mathjax()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(BOOK_DIR), "--warningiserror", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    index = BOOK_DIR / "_build" / "html" / "index.html"
    broken = check_links(index.parent)
    if broken:
        raise RuntimeError("broken internal links in the built book:\n" + "\n".join(broken[:50]))
    print(f"book built: {index} (internal links checked)")
    return index


def check_links(html_dir: Path) -> list[str]:
    """Broken internal links of a built HTML book: every local href/src must name an existing file,
    and every #fragment an id in the target page. Returns the problems (empty when all is well)."""
    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                self.ids.add(a["id"])
            for key in ("href", "src"):
                if a.get(key) and tag in ("a", "img", "link", "script"):
                    self.links.append(a[key])

    pages = {}
    for path in html_dir.rglob("*.html"):
        if "_static" in path.parts:
            continue
        p = Page()
        p.feed(path.read_text(errors="replace"))
        pages[path.resolve()] = p
    problems = []
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("//", "mailto:", "javascript:")):
                continue  # external: not checked (the book must not need them)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if not target.exists():
                problems.append(f"{path.relative_to(html_dir.resolve())}: missing {link}")
            elif parts.fragment and target.suffix == ".html" and target in pages \
                    and parts.fragment not in pages[target].ids:
                problems.append(f"{path.relative_to(html_dir.resolve())}: no anchor #{parts.fragment} in "
                                f"{parts.path or 'itself'}")
    return problems


def results_inventory(root: Path | None = None) -> list[dict]:
    """Every result under ``results/`` (but smoke ones), from what the store recorded beside it: the
    models' own configurations, and each result file's request."""
    root = root or REPO_ROOT / "results"
    rows = []
    for p, c in (m for folder in sorted(root.glob("models/*")) for m in saved_models(folder)):
        cfg = c["config"]
        rows.append({"result": p.relative_to(root.parent).as_posix(), "scale": cfg["scale"],
                     "settings": f"{cfg['training'].upper()}, {cfg['epochs']} epochs, lr {cfg['lr']}, "
                                 f"batch {cfg['batch_size']}"
                                 + (f", PGD-{cfg['at_steps']} eps {cfg['at_eps']:.3g}" if cfg["training"] == "at" else "")
                                 + f", seed {cfg['seed']}",
                     "outcome": f"test acc {c['test_acc']:.4f} in {c['train_seconds']:.0f}s on {c.get('device', '?')}"})
    for p, rec in store.records(root):
        described = _describe(p, rec["request"], rec)
        if described is not None:
            rows.append({"result": p.relative_to(root.parent).as_posix(), **described})
    return [r for r in rows if r["scale"] != "smoke"]  # smoke results are never committed


def _describe(path: Path, q: dict, rec: dict) -> dict | None:
    """Scale, settings and outcome of one stored result (None: a part shown with another file)."""
    folder = path.parent.parent.name
    if path.name.startswith("run-") and path.suffix == ".json":
        r, g = store.load(path), q["gp"]
        return {"scale": r["scale"], "settings": f"eps {q['setting']['eps']:.3g}, {g['ps']}x{g['gn']} GP on {g['n_images']} "
                f"images, PGD-{g['steps']}, seed {q['seed']}" + (f", seeded with {', '.join(g['seed_losses'])}"
                                                              if g.get("seed_losses") else ""),
                "outcome": f"R'' {r['best_fitness']:.3f} vs CE {r['baselines']['ce']:.3f} in {r['seconds']:.0f}s"}
    if q.get("what") in ("paper-arm summary", "paper-arm sensitivity"):
        models = ", ".join(f"{d} {s} models" for d, s in q["model_scale"])
        what = "sensitivity arms (textbook PGD, seeded run, released losses)" if "sensitivity" in q["what"] else \
            f"held-out PGD-{'/'.join(map(str, q['heldout_steps']))} on {q['heldout_images']} images"
        scale = "smoke" if q["name"] == "smoke" else "paper"  # every other arm is committed beside the paper arm
        return {"scale": scale, "settings": f"the '{q['name']}' arm of Question 1 on {models}: {what}",
                "outcome": f"{rec['rows']} of {len(paper_arm.arm_settings(q['name']))} settings"}
    if path.name == "summary.csv":
        return {"scale": q["scale"], "settings": f"grid of the '{q['preset']}' preset, held-out PGD-"
                f"{'/'.join(map(str, q['heldout_steps']))} on {q['heldout_images']} images",
                "outcome": f"{rec['rows']} of 24 settings judged"}
    if path.name == "toy.json":
        return {"scale": q["scale"], "settings": f"{q['n_points']} points, eps {q['eps']}, GP {q['search']}, seed "
                f"{q['seed']}", "outcome": "R, R'' and E per surrogate (risk.csv)"}
    if folder == "atras" or path.parent.name == "failure-sigmoid-sgd":
        if "epochs" not in q or path.name.startswith("transfer-"):
            return None
        return {"scale": q["scale"], "settings": f"{q['epochs']}+{q['adv_epochs']} epochs, FGSM eps {q['eps']:.4f}, "
                f"{q['optimizer']} lr {q['lr']}, {q['failure_mode']}", "outcome": f"{rec['rows']} architectures"}
    if folder == "transfer" and path.suffix == ".csv":
        n = "all correctly classified" if q["n_images"] is None else f"first {q['n_images']} correctly classified"
        what = (f"{q['what']}: {q['source']} on {len(q['targets'])} targets, PGD-{q['cross_steps']}"
                if q["what"] == "cross setting" else
                f"{q['what']}: {q.get('target', '')} <- {q['source']}, eps factors {q['eps_factors']}, PGD-{q['steps']}")
        return {"scale": q["scale"], "settings": f"{what}, {n} test images, seed {q['seed']}",
                "outcome": "R'' per loss (CSV)"}
    if folder == "landscape" and path.suffix == ".json":
        c = store.load(path)
        return {"scale": q["scale"], "settings": f"{q['target']} <- {q['source']}, eps {q['eps']:.3g}, PGD-{q['steps']} on "
                f"{q['n_images']} images, grid {q['resolution']}x{q['resolution']}, seed {q['seed']}",
                "outcome": ", ".join(f"{k}: {v}" for k, v in c["outcomes"].items())}
    return None


QUESTION_1_MARKER = "<!-- QUESTION-1"


def write_intro(grid_scale: str = "cpu") -> None:
    """``intro.md``: the hand-written ``intro_head.md`` with the answer to Question 1 from the paper arm
    (``results/search/paper-arm/summary.csv``, by the protocol page's rule), and the earlier grid's beside it."""
    arm_name = "smoke" if grid_scale == "smoke" else "paper"
    arm = paper_arm.load_summary(arm_name)
    text = paper_arm.answer(arm, paper_arm.load_sensitivity(arm_name))
    if arm is not None and not arm.empty:
        text += " Not as in the paper: " + paper_arm.differences_sentence(paper_arm.ARMS[arm_name], arm)
    text += (" The rule was fixed before this arm's results on the page *Protocol: Question 1 in the paper's own "
             "terms* (some CIFAR-10 rows reuse runs made before it, which the page discloses and a fresh held-out "
             "block checks); the chapter *Searching a surrogate* has every setting with its interval, the "
             "sensitivity arms and what differs from the paper.")
    earlier = gp_search.load_summary(grid_scale)
    if earlier is not None and not earlier.empty:
        text += (" The book's earlier grid (all 24 settings on the few-epoch `cpu` models, the best of three runs "
                 "with a seeded one among them, and a looser verdict rule) is kept there as a labelled second arm: "
                 + gp_search.answer(earlier))
    lines = [text if line.startswith(QUESTION_1_MARKER) else line
             for line in (BOOK_DIR / "intro_head.md").read_text().splitlines()]
    (BOOK_DIR / "intro.md").write_text("\n".join(lines) + "\n")


def write_teaching() -> None:
    """``teaching.md``: the 90-minute lesson with the measured time of each run (:mod:`lossbook.publish.teaching`)."""
    (BOOK_DIR / "teaching.md").write_text(teaching.markdown())


def write_glance(scale: str = "cpu") -> None:
    """``glance.md``: every tested claim of both papers with ours and the verdict (:mod:`lossbook.publish.glance`)."""
    matplotlib.use("Agg")
    summary = paper_arm.load_summary("smoke" if scale == "smoke" else "paper")
    fig = plots.q1_panel(None if summary is None else paper_arm.with_holm(summary), list(SETTINGS),
                         {n: paper_gain(n) for n in SETTINGS})
    (BOOK_DIR / "figures").mkdir(exist_ok=True)
    fig.savefig(BOOK_DIR / "figures" / "q1_panel.png", dpi=110)
    plots.plt.close(fig)
    (BOOK_DIR / "glance.md").write_text(glance.markdown(scale, q1_figure="figures/q1_panel.png"))


def write_reproducing() -> None:
    """``reproducing.md``: the hand-written head and the inventory of committed results."""
    rows = results_inventory()
    by_scale = Counter(r["scale"] for r in rows)
    lines = [(BOOK_DIR / "reproducing_head.md").read_text().rstrip(), "", "## Which results came from where", "",
             f"Generated from the result files at build time: {len(rows)} results, "
             + ", ".join(f"{n} at `{s}` scale" for s, n in sorted(by_scale.items())) + ". Each row says what made it.", "",
             f":::{{admonition}} All {len(rows)} result files", ":class: dropdown", "",
             "| result | scale | settings | outcome |", "|---|---|---|---|"]
    lines += [f"| `{r['result']}` | `{r['scale']}` | {r['settings']} | {r['outcome']} |" for r in rows]
    lines += [":::"]
    (BOOK_DIR / "reproducing.md").write_text("\n".join(lines) + "\n")
