"""Every real-dataset builder builds and reads back in an interpreter where TensorFlow cannot
be imported, even on machines where it is installed, with TFDS' spill to disk (past 1 GB) forced."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow_datasets")

ROOT = pathlib.Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent("""
    import importlib.abc, pathlib, sys

    class WithoutTensorFlow(importlib.abc.MetaPathFinder):
      def __init__(self, finders):
        self.finders = finders

      def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
          return None
        specs = (finder.find_spec(name, path, target) for finder in self.finders)
        return next((spec for spec in specs if spec is not None), None)

    sys.meta_path[:] = [WithoutTensorFlow(list(sys.meta_path))]
    tmp = pathlib.Path(sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from builder_fixtures import build, read
    from test_data_builders_citypersons import write_citypersons
    from test_data_builders_coco import write_coco
    from test_data_builders_crowdhuman import write_crowdhuman
    from test_data_builders_fox import write_fox
    from test_data_builders_pixmo import write_pixmo
    from test_data_builders_pr1_grounding import write_pr1
    from test_data_builders_refcoco import write_refer
    from test_data_builders_uavdt import write_uavdt
    from test_data_builders_wider import write_wider

    from tensorflow_datasets.core import shuffle

    shuffle.MAX_MEM_BUFFER_SIZE = 2000  # bytes: every split spills to TFDS' disk buckets
    cases = [
        ("refcoco/refcoco_unc", write_refer, "train", 2, {}),
        ("pr1_grounding", write_pr1, "train", 2, {}),
        ("pixmo_count", write_pixmo, "validation", 2, {"max_missing_fraction": 0.5}),
        ("fox_page_ocr/en", write_fox, "test", 2, {}),
        ("coco_detection", write_coco, "validation", 3, {}),
        ("crowdhuman", write_crowdhuman, "validation", 2, {}),
        ("citypersons", write_citypersons, "validation", 2, {}),
        ("wider_pedestrian", write_wider, "validation", 3, {}),
        ("uavdt", write_uavdt, "sequences", 4, {}),
    ]
    for name, write, split, size, options in cases:
      folder = name.replace("/", "_")
      build(name, write(tmp / "raw" / folder), tmp / "out", **options)
      examples = read(name, split, tmp / "out")
      assert len(examples) == size, (name, len(examples))
      assert examples[0]["image"].ndim == 3, name
    assert not [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]
    print("OK")
""")


def test_every_builder_builds_and_reads_without_tensorflow(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), str(ROOT / "tests" / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
