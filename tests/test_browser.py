"""Notebook 03 in a real browser: JupyterLab, Debian's chromium, the live widgets.

The test starts JupyterLab on loopback with a copy of notebook 03, drives
Debian's ``/usr/bin/chromium`` headless with Playwright for Python (its
``executable_path``: no browser is downloaded), runs all cells, and checks
what a learner sees: the Exec call's chart lit node by node, and a terminal
where ``echo hi`` typed on the keyboard comes back as ``hi``. Screenshots go
to the test's temporary directory (their paths are printed).

chromium's flags keep it from reaching out to the network on its own
(component updates, sync, QUIC probes): the machine has only loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teaching_cri.trace.charts import ChartSet

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03-exec.ipynb"
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

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is not installed (as root: apt-get install chromium)", allow_module_level=True
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (it is in the test extra)"
)
pytest.importorskip("jupyterlab", reason="the notebooks extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def our_dirs() -> set[Path]:
    return set(Path("/tmp").glob("tcri-nb-*"))


@pytest.fixture
def lab_url(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on loopback serving a copy of notebook 03 (it autosaves;
    the committed notebook must stay clean), with this interpreter as the
    kernel and settings of its own."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root)
    kernels = tmp_path / "share" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
            }
        )
    )
    # No "get Jupyter news?" prompt over the page.
    notification = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    token, port = secrets.token_hex(16), free_port()
    env = {
        **os.environ,
        "JUPYTER_PATH": str(tmp_path / "share"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "HOME": str(tmp_path),
    }
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",  # nothing fetched from the internet
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    before = our_dirs()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not answer in 60 s"
            time.sleep(0.3)
        # The notebook's kernel is started here, not by the page: a page whose
        # kernel-start request fails on a busy machine shows a dialog and
        # runs nothing. The page joins this session when it opens the notebook.
        session = httpx.post(
            f"{base}/api/sessions",
            params={"token": token},
            json={
                "path": "03-exec.ipynb",
                "name": "03-exec.ipynb",
                "type": "notebook",
                "kernel": {"name": "python3"},
            },
            timeout=60,
        )
        assert session.status_code == 201, session.text
        yield f"{base}/lab/tree/03-exec.ipynb?token={token}"
    finally:
        proc.send_signal(signal.SIGTERM)  # JupyterLab shuts its kernels down
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    deadline = time.monotonic() + 60
    while our_dirs() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_dirs() - before, "the notebook's server outlived JupyterLab"


def open_notebook(page: Any, shots: Path, attempt: int) -> bool:
    """Wait for the notebook and its kernel; answer a "Select Kernel" dialog as
    a learner would (Select). False if JupyterLab reported an error."""
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    for _ in range(3):
        page.wait_for_timeout(1000)
        dialog = page.locator(".jp-Dialog")
        if dialog.count() == 0:
            return True
        page.screenshot(path=str(shots / f"0-dialog-{attempt}.png"))
        title = dialog.first.locator(".jp-Dialog-header").inner_text()
        dialog.first.locator(".jp-mod-accept").first.click()
        if "Select Kernel" not in title:
            return False
    return False


def a_cell_started(page: Any) -> bool:
    try:
        page.wait_for_function(
            """() => {
              const prompt = document.querySelector('.jp-CodeCell .jp-InputPrompt');
              return prompt && /\\[(\\*|\\d+)\\]/.test(prompt.textContent);
            }""",
            timeout=10_000,
        )
        return True
    except playwright_sync.TimeoutError:
        return False


TERMINAL_LINES = """el => {
  const buffer = el.tcriTerminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines;
}"""


def test_notebook_03_lights_the_exec_chart_and_its_terminal_answers(
    lab_url: str, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    exec_chart = ChartSet.load()["Exec"]
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        console = (tmp_path / "console.log").open("w")  # the page's console, for failures
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.on("console", lambda msg: console.write(f"{msg.type}: {msg.text}\n"))
            started = False
            for attempt in range(4):
                # On a loaded machine a request of the page to JupyterLab now
                # and then fails ("Failed to fetch": a theme, the kernel's
                # session), or the page never gets its kernel ready and Run All
                # runs nothing: the page is then loaded anew.
                page.goto(lab_url)
                if open_notebook(page, shots, attempt):
                    for _ in range(2):
                        page.locator(".jp-NotebookPanel .jp-Cell").first.click()
                        page.click("#jp-MainMenu >> text=Run")
                        page.click(".lm-Menu-content >> text=Run All Cells")
                        if a_cell_started(page):
                            started = True
                            break
                if started:
                    break
                page.screenshot(path=str(shots / f"0-nothing-ran-{attempt}.png"))
            console.flush()
            assert started, f"Run All Cells ran nothing in four page loads: {tmp_path}/console.log"

            # The last code cell has run once its prompt holds a number.
            page.wait_for_function(
                """() => {
                  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                  return prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                timeout=180_000,
            )
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']")
            assert errors.count() == 0, errors.first.inner_text()
            page.screenshot(path=str(shots / "1-after-run-all.png"), full_page=True)

            # The Exec call's chart, drawn by the widget and lit from its trace.
            chart = page.locator(".tcri-chart", has_text="Exec ·").first
            chart.wait_for()
            page.wait_for_function(
                "el => el.dataset.done === '1'", arg=chart.element_handle(), timeout=30_000
            )
            lit = chart.evaluate(
                "el => [...el.querySelectorAll('g.node.tcri-lit')].map(g => g.dataset.node)"
            )
            assert exec_chart.start in lit and len(lit) >= 4, lit
            assert chart.locator("g.edge.tcri-lit").count() >= 3
            assert "#1" in chart.locator("text.tcri-ann").first.text_content()  # type: ignore[operator]
            chart.scroll_into_view_if_needed()
            chart.screenshot(path=str(shots / "2-exec-chart.png"))

            # The terminal: type on the keyboard, read xterm.js's screen.
            terminal = page.locator(".tcri-terminal").first
            page.wait_for_function(
                "el => el.dataset.status === 'open'", arg=terminal.element_handle()
            )
            terminal.locator(".xterm-screen").click()
            page.keyboard.type("echo hi\n", delay=20)
            page.wait_for_function(
                f"el => ({TERMINAL_LINES})(el).some(line => line.trim() === 'hi')",
                arg=terminal.element_handle(),
                timeout=20_000,
            )
            lines = terminal.evaluate(TERMINAL_LINES)
            assert any(line.strip().endswith("echo hi") for line in lines), lines
            terminal.scroll_into_view_if_needed()
            terminal.screenshot(path=str(shots / "3-terminal.png"))

            # A full-screen program: busybox top draws by cursor movement on
            # the alternate screen; xterm.js must place its header and table.
            page.keyboard.type("top\n", delay=20)
            page.wait_for_function(
                f"""el => {{
                  const lines = ({TERMINAL_LINES})(el);
                  return lines.some(l => l.startsWith('Mem:'))
                    && lines.some(l => /PID\\s+PPID/.test(l));
                }}""",
                arg=terminal.element_handle(),
                timeout=20_000,
            )
            terminal.screenshot(path=str(shots / "5-top.png"))
            page.keyboard.type("q")
            page.screenshot(path=str(shots / "4-page.png"), full_page=True)
        except Exception:
            # What the page showed, and what JupyterLab said, for whoever reads the failure.
            page.screenshot(path=str(shots / "failed.png"), full_page=True)
            print(f"screenshots: {shots}")
            print((tmp_path / "jupyterlab.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            browser.close()
            console.close()
    print(f"screenshots: {shots}")
