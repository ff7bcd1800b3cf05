"""The book, built and read in a real browser.

The book is built once for the session by ``book/build.py`` (the command
``scripts/book`` runs): every notebook executed against the server it starts,
a page per chart, Jupyter Book with warnings as errors. Then Debian's
``/usr/bin/chromium``, headless, driven by Playwright for Python (its
``executable_path``: no browser is downloaded), opens the built HTML from
disk and walks it from the first page:

- every internal link leads to a file that exists and, when it names an
  anchor, to an element with that id on the page it names;
- every image on every page loaded (natural size not zero) and has alt text;
- each chart of ``diagrams/`` has its page, reached by links, showing its SVG
  drawn at a size above zero;
- each notebook's page holds the outputs of its cells (it was executed);
- no page asked for anything but files of the book (the build is offline and
  so is the book).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from teaching_cri.trace.charts import ChartSet

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_SCHEMES = {"file", "data", "blob", "about"}

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is not installed (as root: apt-get install chromium)", allow_module_level=True
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (it is in the test extra)"
)
pytest.importorskip("jupyter_book", reason="the book extra is not installed (scripts/book)")
pytest.importorskip("nbclient", reason="the book extra is not installed (scripts/book)")


@pytest.fixture(scope="session")
def book_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The book built once for the session, notebooks executed."""
    out = tmp_path_factory.mktemp("book")
    run = subprocess.run(
        [sys.executable, str(REPO / "book" / "build.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = out / "build.log"
    log.write_text(run.stdout + run.stderr)
    assert run.returncode == 0, (
        f"book/build.py failed (exit {run.returncode}); log {log}:\n"
        + (run.stdout + run.stderr)[-6000:]
    )
    html = out / "html"
    assert (html / "index.html").exists()
    return html


@dataclass
class Page:
    path: Path
    ids: set[str]
    links: list[str]
    images: list[dict[str, object]]
    outputs: int


@dataclass
class Crawl:
    pages: dict[Path, Page] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)  # requests not for a file of the book


@pytest.fixture(scope="session")
def crawl(book_html: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crawl]:
    """Every page reachable from the first one by internal links, as chromium saw it."""
    result = Crawl()
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            page = browser.new_page()
            page.on(
                "request",
                lambda r: (
                    result.outside.append(r.url)
                    if urlparse(r.url).scheme not in LOCAL_SCHEMES
                    else None
                ),
            )
            todo = [(book_html / "index.html").resolve()]
            while todo:
                path = todo.pop()
                if path in result.pages:
                    continue
                redirect = meta_refresh_target(path)
                if redirect is not None:
                    # Jupyter Book's index.html is a meta refresh to the first
                    # page: chromium would navigate away while we read it.
                    result.pages[path] = Page(path, set(), [redirect], [], 0)
                    todo.append((path.parent / unquote(redirect)).resolve())
                    continue
                page.goto(path.as_uri(), wait_until="load")
                seen = Page(
                    path,
                    set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")),
                    page.eval_on_selector_all(
                        "a[href]", "els => els.map(a => a.getAttribute('href'))"
                    ),
                    page.eval_on_selector_all(
                        "img",
                        """els => els.map(i => ({src: i.currentSrc, alt: i.alt,
                            natural: i.naturalWidth, width: i.getBoundingClientRect().width,
                            height: i.getBoundingClientRect().height}))""",
                    ),
                    len(page.query_selector_all(".cell_output")),
                )
                result.pages[path] = seen
                for href in seen.links:
                    target = local_target(path, href)
                    if target is not None and target[0].suffix == ".html":
                        todo.append(target[0])
        finally:
            browser.close()
    yield result


def meta_refresh_target(page: Path) -> str | None:
    """The URL a ``<meta http-equiv="Refresh">`` page sends the reader to."""
    match = re.search(
        r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"',
        page.read_text(errors="replace"),
        re.IGNORECASE,
    )
    return match.group(1) if match else None


def local_target(page: Path, href: str) -> tuple[Path, str] | None:
    """The file and anchor an internal link points to; None for another site."""
    url = urlparse(href)
    if url.scheme and url.scheme != "file":
        return None
    rest, anchor = urldefrag(href)
    if url.scheme == "file":
        target = Path(unquote(urlparse(rest).path))
    elif rest:
        target = (page.parent / unquote(rest)).resolve()
    else:
        target = page
    return target, unquote(anchor)


def test_no_internal_link_is_broken(crawl: Crawl, book_html: Path) -> None:
    broken = []
    for page in crawl.pages.values():
        for href in page.links:
            target = local_target(page.path, href)
            if target is None:
                continue
            path, anchor = target
            where = f"{page.path.relative_to(book_html)}: {href}"
            if not path.exists():
                broken.append(f"{where} (no file {path})")
            elif anchor and path.suffix == ".html" and anchor not in crawl.pages[path].ids:
                broken.append(f"{where} (no element with id {anchor!r})")
    assert len(crawl.pages) > 20, f"only {len(crawl.pages)} pages reached"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_image_loads_with_alt_text(crawl: Crawl, book_html: Path) -> None:
    bad = [
        f"{page.path.relative_to(book_html)}: {img['src']} "
        f"(natural width {img['natural']}, alt {img['alt']!r})"
        for page in crawl.pages.values()
        for img in page.images
        if not img["natural"] or not str(img["alt"]).strip()
    ]
    assert not bad, "images not loaded or without alt text:\n" + "\n".join(bad)


def test_every_chart_page_shows_its_svg(crawl: Crawl, book_html: Path) -> None:
    charts = ChartSet.load()
    missing, blank = [], []
    for name in charts:
        path = (book_html / "generated" / "charts" / f"{name}.html").resolve()
        page = crawl.pages.get(path)
        if page is None:
            missing.append(name)
            continue
        drawn = [
            img
            for img in page.images
            if str(img["src"]).endswith(".svg")
            and name in str(img["src"])
            and float(str(img["width"])) > 0
            and float(str(img["height"])) > 0
        ]
        if not drawn:
            blank.append(f"{name}: {page.images}")
    assert not missing, f"chart pages not reached by any link: {missing}"
    assert not blank, "chart pages without a rendered SVG:\n" + "\n".join(blank)


def test_golden_paths_are_drawn(crawl: Crawl, book_html: Path) -> None:
    """A chart with a golden path of its own shows it: one figure per scenario."""
    golden = REPO / "tests" / "golden"
    if not golden.is_dir():
        pytest.skip("tests/golden/ is not in this checkout")
    for chart_dir in sorted(p for p in golden.iterdir() if p.is_dir()):
        scenarios = [p.stem for p in chart_dir.glob("*.txt") if "." not in p.stem]
        page = crawl.pages[
            (book_html / "generated" / "charts" / f"{chart_dir.name}.html").resolve()
        ]
        srcs = {Path(urlparse(str(i["src"])).path).name for i in page.images}
        for scenario in scenarios:
            assert any(f".{scenario}." in s for s in srcs), (chart_dir.name, scenario, srcs)


def test_notebooks_are_executed(crawl: Crawl, book_html: Path) -> None:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    if not notebooks:
        pytest.skip("no notebooks in this checkout")
    for nb in notebooks:
        path = (book_html / "generated" / "notebooks" / f"{nb.stem}.html").resolve()
        assert path in crawl.pages, f"{nb.name}: its page is not reached by any link"
        assert crawl.pages[path].outputs > 0, f"{nb.name}: its page shows no cell outputs"


def test_nothing_is_fetched_from_outside(crawl: Crawl) -> None:
    assert not crawl.outside, f"pages asked for: {sorted(set(crawl.outside))[:20]}"
