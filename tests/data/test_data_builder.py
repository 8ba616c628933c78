"""TFDS builder `synthetic_perception`: TF-free build and read-back, source validation."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from perception_rl.data import pipeline, synthetic
from perception_rl.data.builders import synthetic_perception as sp

SIZES = {"train": 6, "validation": 3, "test": 3}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh interpreter in which `tensorflow` cannot be found even where installed: one
# finder wraps all the others and reports it missing, as for an uninstalled package.
_BUILD_WITHOUT_TF = textwrap.dedent("""
    import importlib.abc, importlib.util, sys

    class WithoutTensorFlow(importlib.abc.MetaPathFinder):
      def __init__(self, finders):
        self.finders = finders

      def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
          return None
        specs = (finder.find_spec(name, path, target) for finder in self.finders)
        return next((spec for spec in specs if spec is not None), None)

    sys.meta_path[:] = [WithoutTensorFlow(list(sys.meta_path))]
    assert importlib.util.find_spec("tensorflow") is None
    try:
      import tensorflow
      raise SystemExit("tensorflow is importable")
    except ImportError:
      pass

    import numpy as np
    import tensorflow_datasets as tfds
    from perception_rl.data import synthetic
    from perception_rl.data.builders import synthetic_perception as sp

    data_dir, sizes = sys.argv[1], {"train": 6, "validation": 3, "test": 3}
    for task in synthetic.TASKS:
      config = sp.SyntheticPerceptionConfig(name=f"{task}_tiny", task=task, split_sizes=sizes)
      sp.SyntheticPerception(data_dir=data_dir, config=config).download_and_prepare()
      for split, size in sizes.items():
        records = tfds.data_source(f"synthetic_perception/{task}_tiny", split=split,
                                   data_dir=data_dir)
        assert len(records) == size, (task, split, len(records))
        for index in range(size):
          got = sp.to_example(records[index])
          want = synthetic.generate_example(task, index, split=split)
          assert got.keys() == want.keys(), (got.keys(), want.keys())
          for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{task} {key}")
    assert not [name for name in sys.modules if name.partition(".")[0] == "tensorflow"]
    print("OK")
""")


def test_build_and_read_back_without_tensorflow(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_WITHOUT_TF, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
    files = os.listdir(tmp_path / "synthetic_perception" / "counting_tiny" / "1.0.0")
    assert "synthetic_perception-train.array_record-00000-of-00001" in files


def _build(tmp_path, source_dir, name="from_source"):
    config = sp.SyntheticPerceptionConfig(name=name, task="detection")
    builder = sp.SyntheticPerception(
        data_dir=tmp_path / "tfds", config=config, source_dir=source_dir
    )
    builder.download_and_prepare()
    return builder


def test_build_from_raw_source_matches_the_generator_and_feeds_grain(tmp_path):
    source = sp.write_source(tmp_path / "raw", "detection", SIZES, seed=5)
    builder = _build(tmp_path, source)
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == SIZES
    dataset = pipeline.tfds_source("from_source", "validation", str(tmp_path / "tfds"))
    for index in range(SIZES["validation"]):
        want = synthetic.generate_example("detection", index, split="validation", seed=5)
        got = dataset[index]
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _corrupt(tmp_path, edit):
    """A raw source whose validation/1 example is broken by `edit(directory, records)`."""
    source = sp.write_source(tmp_path / "raw", "counting", {"validation": 3})
    path = source / "validation.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    edit(source, records[1])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return source


def test_unreadable_image_fails_the_build_naming_the_example(tmp_path):
    def truncate_image(source, record):
        image = source / record["image"]
        image.write_bytes(image.read_bytes()[:40])

    source = _corrupt(tmp_path, truncate_image)
    with pytest.raises(ValueError, match=r"Example validation/1 .*000001\.png.*unreadable image"):
        _build(tmp_path, source)


def test_box_outside_the_image_fails_the_build_naming_the_example(tmp_path):
    def push_box_out(source, record):
        del source
        record["boxes"][-1][2] = 10_000.0

    source = _corrupt(tmp_path, push_box_out)
    with pytest.raises(ValueError, match=r"Example validation/1 .*box .*outside the \d+x\d+ image"):
        _build(tmp_path, source)


def test_missing_image_fails_the_build_naming_the_example(tmp_path):
    source = _corrupt(tmp_path, lambda source, record: (source / record["image"]).unlink())
    with pytest.raises(ValueError, match=r"Example validation/1 .*unreadable record"):
        _build(tmp_path, source)
