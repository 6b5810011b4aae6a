"""Open the built book in headless Chromium at 1,280 and 800 pixels: every chapter's figures loaded,
math rendered, nothing cut off or scrolling the page sideways (wide tables and code scroll or wrap in
their own box), no literal template braces in the prose, hidden code opening when its toggle is
clicked, every image inside a figure with a numbered caption and alt text, no Python object reprs
(``<... at 0x...>``), each chapter's notebook offered for download, no page taller than ``MAX_HEIGHT``,
every number of a glance row's result shown on the chapter it links to;
each page's height printed; screenshots of every page at both widths.

Usage: ``python tests/browser_check.py [book/_build/html] [docs/screenshots]`` (``make browser-test``).
Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver) and
the ``selenium`` package; serves the book from 127.0.0.1 only.
"""
from __future__ import annotations

import functools
import http.server
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from lossbook.chapters.registry import CHAPTERS

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1500", "--hide-scrollbars"]
WIDTHS = (1280, 800)

IMAGES_JS = """return Array.from(document.querySelectorAll('main img, article img'))
  .map(i => ({src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));"""
MATH_JS = """const src = Array.from(document.querySelectorAll('.math.notranslate'));
  const done = src.filter(e => e.querySelector('script[type^="math/tex"]') && e.querySelector('.MathJax, .MathJax_Display'));
  const errors = document.querySelectorAll('.MathJax_Error, merror').length;
  return {src: src.length, done: done.length, errors: errors};"""


# elements of the article that stick out of it without a scrolling box of their own, and page-level sideways scroll
OVERFLOW_JS = """const article = document.querySelector('article') || document.querySelector('main');
  const limit = article.getBoundingClientRect().right + 2, bad = [];
  for (const el of article.querySelectorAll('pre, table, img, p, li, h1, h2, h3')) {
    let p = el.parentElement, scroller = null;
    while (p && p !== article) { const s = getComputedStyle(p).overflowX;
      if (s === 'auto' || s === 'scroll' || s === 'hidden') { scroller = p; break; } p = p.parentElement; }
    if (!scroller && el.getBoundingClientRect().right > limit && el.offsetParent !== null)
      bad.push(el.tagName + ': ' + (el.textContent || el.getAttribute('src') || '').trim().slice(0, 50));
  }
  return {sideways: document.documentElement.scrollWidth > window.innerWidth + 1, bad: bad.slice(0, 5)};"""
# prose (not code, not math) showing an unfilled template such as "PGD-{steps}"
BRACES_JS = """const out = [];
  for (const el of document.querySelectorAll('article p, article li, article h1, article h2, article h3, article td')) {
    const c = el.cloneNode(true);
    c.querySelectorAll('code, pre, .math, script, .MathJax, .MathJax_Display, .MathJax_Preview').forEach(e => e.remove());
    const m = c.textContent.match(/\\{[A-Za-z_][A-Za-z_0-9]*\\}/);
    if (m) out.push(m[0] + ' in: ' + c.textContent.trim().slice(0, 60));
  }
  return out.slice(0, 5);"""
# cells that show an image outside a figure element whose caption starts "Figure N.M" (myst-nb's
# cell-metadata figures; a cell with several panels composes them into one figure)
CAPTIONS_JS = """const out = [];
  for (const cell of document.querySelectorAll('article div.cell')) {
    const imgs = Array.from(cell.querySelectorAll('.cell_output img'));
    const inFigures = imgs.every(i => { const f = i.closest('figure');
      const c = f && (f.querySelector('figcaption .caption-text') || f.querySelector('figcaption'));
      return c && /^Figure \\d+\\.\\d+/.test(c.textContent.trim()); });
    if (!inFigures) out.push(cell.textContent.trim().slice(0, 60));
  }
  return out;"""
# figure elements: each with a caption, and an image whose alt text says something (not a file hash)
FIGURES_JS = """return Array.from(document.querySelectorAll('article figure')).map(f => {
    const img = f.querySelector('img'), alt = img ? (img.getAttribute('alt') || '') : '';
    return {id: f.id, caption: !!f.querySelector('figcaption'), alt: alt.length >= 10 && !/^[0-9a-f]{16,}/.test(alt)}; });"""
# Python object reprs shown to the reader, such as "<matplotlib.legend.Legend at 0x7f...>"
REPRS_JS = """const m = (document.querySelector('article') || document.body).innerText.match(/<[A-Za-z_][\\w.]* (object )?at 0x[0-9a-f]+>/g);
  return m ? m.slice(0, 3) : [];"""
# the page's download menu offers its source notebook
DOWNLOAD_JS = """return Array.from(document.querySelectorAll('a[href$=".ipynb"]')).map(a => a.getAttribute('href'));"""
# click the first hidden-code toggle: its code must become visible
TOGGLE_JS = """const d = document.querySelector('details.hide, details.above-input, details.toggle-details');
  if (!d) return null;
  const s = d.querySelector('summary'); if (s) s.click();
  const pre = d.querySelector('pre');
  return {open: d.open, visible: !!pre && pre.offsetHeight > 0};"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # no request log
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a browser closing a connection early is not an error
            pass

    srv = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


#: the tallest a page may be (px, at either width): a front-matter page is read at once (the glance page
#: was 11,650 px and the Reproducing page 36,800 before they were cut down); a chapter carries its figures
MAX_HEIGHT = {"front": 8_000, "chapter": 18_000}
#: the first screen: the window's height (set in :func:`check`)
FIRST_SCREEN = 1_500


def check_page(driver, base: str, page: str, width: int, shots: Path) -> list[str]:
    """One page at one window width: what is wrong with it (empty when nothing), and its screenshot."""
    problems = []
    driver.get(f"{base}/{page}")
    deadline = time.time() + 30
    math = driver.execute_script(MATH_JS)
    while math["src"] and math["done"] < math["src"] and time.time() < deadline:
        time.sleep(0.5)
        math = driver.execute_script(MATH_JS)
    images = driver.execute_script(IMAGES_JS)
    figs = [i for i in images if "_images/" in (i["src"] or "")]
    bad = [i["src"] for i in images if not i["complete"] or i["w"] == 0]
    overflow, braces = driver.execute_script(OVERFLOW_JS), driver.execute_script(BRACES_JS)
    height, reprs = driver.execute_script("return document.documentElement.scrollHeight;"), driver.execute_script(REPRS_JS)
    print(f"{page} at {width}px: {height:,} px tall, {len(figs)} images, {len(bad)} not loaded; math "
          f"{math['done']}/{math['src']} rendered; {len(overflow['bad'])} cut off"
          f"{', page scrolls sideways' if overflow['sideways'] else ''}")
    if page.startswith("chapters/"):  # the answer on the first screen: the takeaway box starts within it
        top = driver.execute_script("const t = document.querySelector('.takeaway'); "
                                    "return t ? t.getBoundingClientRect().top + window.scrollY : null;")
        print(f"{page} at {width}px: takeaway at {top if top is None else round(top):,} px")
        if top is None or top > FIRST_SCREEN:
            problems.append(f"{page} at {width}px: the takeaway box starts at {top} px, below the first screen "
                            f"({FIRST_SCREEN:,} px)")
    limit = MAX_HEIGHT["chapter" if page.startswith("chapters/") else "front"]
    if height > limit:
        problems.append(f"{page} at {width}px: {height:,} px tall, more than the {limit:,} px a page of its kind may be")
    if reprs:
        problems.append(f"{page}: Python object reprs shown: {reprs}")
    if bad:
        problems.append(f"{page}: images not loaded: {bad}")
    if page.startswith("chapters/") and not figs:
        problems.append(f"{page}: no figure")
    if math["src"] and (math["done"] < math["src"] or math["errors"]):
        problems.append(f"{page}: math not rendered ({math})")
    if overflow["sideways"] or overflow["bad"]:
        problems.append(f"{page} at {width}px: cut off or scrolling sideways: {overflow}")
    if braces:
        problems.append(f"{page}: template braces in the prose: {braces}")
    figures = driver.execute_script(FIGURES_JS)
    bad_figures = [f["id"] or "?" for f in figures if not (f["caption"] and f["alt"])]
    if bad_figures:
        problems.append(f"{page}: figure elements without a caption or alt text: {bad_figures}")
    uncaptioned = driver.execute_script(CAPTIONS_JS) if page.startswith("chapters/") else []
    if uncaptioned:
        problems.append(f"{page}: images outside a captioned figure: {uncaptioned}")
    name = shots / f"{Path(page).stem}-{width}.png"
    driver.save_screenshot(str(name))
    Image.open(name).convert("RGB").quantize(colors=128).save(name, optimize=True)  # small PNGs
    if page.startswith("chapters/"):
        links = driver.execute_script(DOWNLOAD_JS)
        target = [l for l in links if l.endswith(Path(page).stem + ".ipynb")]
        if not target:
            problems.append(f"{page}: no download link to its notebook")
        else:
            import urllib.request

            try:
                with urllib.request.urlopen(f"{base}/chapters/{target[0]}", timeout=10) as r:
                    if b'"cells"' not in r.read(4000):
                        problems.append(f"{page}: its notebook download is not a notebook")
            except OSError as exc:
                problems.append(f"{page}: its notebook download fails ({exc})")
    if page.startswith("chapters/"):  # after the screenshot: the first screen as a reader meets it
        toggle = driver.execute_script(TOGGLE_JS)
        if toggle is None:
            problems.append(f"{page}: no hidden-code toggle")
        elif not (toggle["open"] and toggle["visible"]):
            problems.append(f"{page}: the hidden code did not open when its toggle was clicked ({toggle})")
    return problems


# the glance page's claim rows: the chapter each links to, and its "ours" cell
GLANCE_ROWS_JS = """return Array.from(document.querySelectorAll('article table tr')).map(tr => {
    const td = tr.querySelectorAll('td'), a = td.length >= 6 ? td[1].querySelector('a') : null;
    return a ? {href: a.getAttribute('href'), ours: td[3].innerText} : null; }).filter(r => r);"""
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")


def check_glance_counts(driver, base: str) -> list[str]:
    """Every number of a glance row's result (its first clause: the count or gain with its interval)
    appears on the chapter page the row links to: the two pages show one computation, not two."""
    driver.get(f"{base}/glance.html")
    rows, pages, problems = driver.execute_script(GLANCE_ROWS_JS), {}, []
    for row in rows:
        page = row["href"].split("#")[0]
        if page not in pages:
            driver.get(f"{base}/{page}")
            pages[page] = set(NUMBER.findall(driver.execute_script("return document.body.innerText;")))
        lead = row["ours"].split(" (")[0]
        missing = [n for n in NUMBER.findall(lead) if n not in pages[page]]
        if missing:
            problems.append(f"glance.html: '{lead[:70]}' has {missing}, which {page} does not show")
    print(f"glance.html: {len(rows)} claim rows, their numbers checked against {len(pages)} chapter pages")
    if not rows:
        problems.append("glance.html: no claim rows found")
    return problems


def check(html: Path, shots: Path) -> list[str]:
    pages = ["intro.html", "glance.html"] + sorted(p.relative_to(html).as_posix() for p in (html / "chapters").glob("*.html")) \
        + [f"{c.protocol}.html" for c in CHAPTERS.values() if c.protocol] \
        + ["notation.html", "teaching.html", "reproducing.html", "references.html"]
    srv, base = serve(html)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in FLAGS + [f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    problems = []
    shots.mkdir(parents=True, exist_ok=True)
    try:
        problems += check_glance_counts(driver, base)
        for width in WIDTHS:
            driver.set_window_size(width, FIRST_SCREEN)
            for page in pages:
                problems += check_page(driver, base, page, width, shots)
    finally:
        driver.quit()
        srv.shutdown()
    return problems


if __name__ == "__main__":
    html = Path(sys.argv[1] if len(sys.argv) > 1 else "book/_build/html")
    shots = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
    problems = check(html, shots)
    for p in problems:
        print("PROBLEM:", p)
    print(f"{'browser check failed' if problems else 'browser check passed'}: screenshots in {shots}")
    sys.exit(1 if problems else 0)
