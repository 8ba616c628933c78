"""Every notebook in colabs/ runs top to bottom in a fresh interpreter and leaves checked results.

The code cells are executed in order in one namespace (a fresh `python` process, one CPU
device, as a user's kernel would be), then the notebook's checks from `colab_checks.py` run in
that same namespace: the values a notebook shows are compared with the package's own APIs, not
only the exit code. Notebooks are committed without outputs.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))
# Notebooks whose results `colab_checks.check_<name>` verifies (every notebook but quickstart,
# which asserts its own result in its last cell).
CHECKED = {"rewards", "datasets", "train_and_compare", "checkpoint"}


def notebook_code(notebook: pathlib.Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_checked_notebooks_exist():
    assert CHECKED <= {n.stem for n in NOTEBOOKS}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(notebook):
    nb = json.loads(notebook.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{notebook.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{notebook.name} cell {i} was executed"
        assert "attachments" not in cell, f"{notebook.name} cell {i} has attachments"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_installs_first_and_names_no_machine_paths(notebook):
    nb = json.loads(notebook.read_text())
    code_cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    # The first cell installs the package from the repository, only when it is missing.
    first = code_cells[0]
    assert "importlib.util.find_spec(" in first and '"perception_rl"' in first, notebook.name
    assert '"pip", "install"' in first and "REPOSITORY" in first, notebook.name
    text = notebook.read_text()
    for fragment in ("/work/", "/home/", "/tmp/", "/Users/", "C:\\\\"):
        assert fragment not in text, f"{notebook.name} names a machine path ({fragment})"


def test_readme_has_an_open_in_colab_badge_per_notebook():
    readme = (ROOT / "README.md").read_text()
    for notebook in NOTEBOOKS:
        url = f"https://colab.research.google.com/github/YOUR_ORG/perception_rl/blob/main/colabs/{notebook.name}"
        assert (
            f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"
            in readme
        ), notebook.name


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, tmp_path):
    code = notebook_code(notebook)
    assert code.strip(), f"{notebook} has no code"
    if notebook.stem in CHECKED:
        code += (
            "\n\n# --- appended by tests/test_colabs.py: the notebook's checks ---\n"
            f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            f"import colab_checks\ncolab_checks.check_{notebook.stem}(globals())\n"
            "print('colab checks passed')\n"
        )
    script = tmp_path / "notebook.py"
    script.write_text(code)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    began = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # A fresh interpreter, as a user's kernel would be (one CPU device, default settings). The
    # worktree's package is imported (PYTHONPATH), whatever is installed.
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=run_dir,
        env={
            "JAX_PLATFORMS": "cpu",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "MPLBACKEND": "Agg",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HOME": str(tmp_path),
            "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # test_plan.py may hold libtpu's lock
            "TMPDIR": str(tmp_path),
        },
    )
    seconds = time.perf_counter() - began
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    if notebook.stem in CHECKED:
        assert "colab checks passed" in result.stdout
    print(f"{notebook.name}: {seconds:.1f} s wall, {cpu:.1f} s CPU")
