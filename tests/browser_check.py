"""Open the built book in headless Chromium: every chapter's figures loaded, math rendered, screenshots.

Usage: ``python tests/browser_check.py [book/_build/html] [docs/screenshots]`` (``make browser-test``).
Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver) and
the ``selenium`` package; serves the book from 127.0.0.1 only.
"""
from __future__ import annotations

import functools
import http.server
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1200,1500", "--hide-scrollbars"]

IMAGES_JS = """return Array.from(document.querySelectorAll('main img, article img'))
  .map(i => ({src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));"""
MATH_JS = """const src = Array.from(document.querySelectorAll('.math.notranslate'));
  const done = src.filter(e => e.querySelector('script[type^="math/tex"]') && e.querySelector('.MathJax, .MathJax_Display'));
  const errors = document.querySelectorAll('.MathJax_Error, merror').length;
  return {src: src.length, done: done.length, errors: errors};"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def check(html: Path, shots: Path) -> list[str]:
    pages = ["intro.html"] + sorted(p.relative_to(html).as_posix() for p in (html / "chapters").glob("*.html")) \
        + ["reproducing.html"]
    srv, base = serve(html)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in FLAGS + [f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    problems = []
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for page in pages:
            driver.get(f"{base}/{page}")
            deadline = time.time() + 30
            math = driver.execute_script(MATH_JS)
            while math["src"] and math["done"] < math["src"] and time.time() < deadline:
                time.sleep(0.5)
                math = driver.execute_script(MATH_JS)
            images = driver.execute_script(IMAGES_JS)
            figs = [i for i in images if "_images/" in (i["src"] or "")]
            bad = [i["src"] for i in images if not i["complete"] or i["w"] == 0]
            line = f"{page}: {len(figs)} figures, {len(bad)} not loaded; math {math['done']}/{math['src']} rendered"
            print(line)
            if bad:
                problems.append(f"{page}: images not loaded: {bad}")
            if page.startswith("chapters/") and not figs:
                problems.append(f"{page}: no figure")
            if math["src"] and (math["done"] < math["src"] or math["errors"]):
                problems.append(f"{page}: math not rendered ({math})")
            name = shots / (Path(page).stem + ".png")
            driver.save_screenshot(str(name))
            Image.open(name).convert("RGB").quantize(colors=128).save(name, optimize=True)  # small PNGs
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
