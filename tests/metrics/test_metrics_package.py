"""The metrics package's public surface, and that importing it stays cheap."""

import pathlib
import subprocess
import sys

from perception_rl import metrics


def test_public_names_resolve():
    assert all(
        callable(getattr(metrics, name)) or name == "COCO_METRIC_NAMES" for name in metrics.__all__
    )


def test_import_loads_no_heavy_dependency():
    heavy = ("jax", "nltk", "faster_coco_eval", "scipy.optimize", "jieba")
    code = (
        "import sys; from perception_rl.metrics import coco_metrics, crowd_metrics; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert result.stdout.strip() == "[]"
