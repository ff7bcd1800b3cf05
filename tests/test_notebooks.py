"""The notebooks: committed clean, and each one runs top to bottom.

Each notebook is executed with nbclient in a real IPython kernel, against the
real server its first cell starts (runc as root, the unprivileged tier as a
normal user); any cell that raises fails the test. Afterwards the kernel has
shut down, and everything the notebook's server made must be gone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed")
nbclient = pytest.importorskip("nbclient", reason="the notebooks extra is not installed")
pytest.importorskip("anywidget", reason="the notebooks extra is not installed")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = [
    "00-start-here.ipynb",
    "01-images.ipynb",
    "02-pod-and-container.ipynb",
    "03-exec.ipynb",
    "04-attach.ipynb",
    "05-resources-and-logs.ipynb",
    "06-inside-the-streaming-server.ipynb",
    "07-stop-and-clean-up.ipynb",
    "08-the-kubelets-view.ipynb",
]


def test_the_nine_notebooks_are_there() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{name}: cells {dirty} carry outputs or execution counts (clear them)"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def our_dirs() -> set[Path]:
    return set(Path("/tmp").glob("tcri-nb-*"))


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = our_dirs()
    client = nbclient.NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.km = client.create_kernel_manager()
    # This interpreter's kernel, the one with teaching_cri installed, whatever
    # python3 kernel spec the machine has elsewhere.
    client.km.kernel_spec.argv[0] = sys.executable
    client.execute()  # raises CellExecutionError naming the cell that failed
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "teaching-cri server (started by this notebook)" in text
    nbformat.write(nb, tmp_path / name)  # the executed notebook, to look at
    print(f"executed: {tmp_path / name}")
    # The kernel has ended: its server's guardian removes the directory.
    deadline = time.monotonic() + 60
    while our_dirs() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_dirs() - before, f"left behind: {our_dirs() - before}"
