"""`python -m perception_rl.data.build`, `datasets.source` and the `data.source=tfds` hook."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import write_image
from test_data_builders_coco import write_coco
from test_data_builders_crowdhuman import write_crowdhuman
from test_data_builders_refcoco import write_refer

from perception_rl.data import build, datasets, pipeline, sources

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_cli_builds_summarises_and_reuses_a_finished_build(tmp_path, capsys):
    raw_dir = write_crowdhuman(tmp_path / "raw")
    args = ["crowdhuman", f"--manual_dir={raw_dir}", f"--data_dir={tmp_path / 'out'}"]
    assert build.main(args) == 0
    assert "crowdhuman/full/1.0.0 validation: 2 examples, 0 skipped" in capsys.readouterr().out
    stamp = os.path.getmtime(tmp_path / "out" / "crowdhuman" / "full" / "1.0.0")
    assert build.main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert os.path.getmtime(tmp_path / "out" / "crowdhuman" / "full" / "1.0.0") == stamp


def test_cli_reports_skips_per_split(tmp_path, capsys):
    from test_data_builders_pixmo import write_pixmo

    raw_dir = write_pixmo(tmp_path / "raw")
    args = [
        "pixmo_count",
        f"--manual_dir={raw_dir}",
        f"--data_dir={tmp_path}/out",
        "--option",
        "max_missing_fraction=0.5",
    ]
    assert build.main(args) == 0
    assert (
        "pixmo_count/1.0.0 validation: 2 examples, 2 skipped (1 image missing, 1 sha256 mismatch)"
        in capsys.readouterr().out
    )


def test_source_errors_say_how_to_build_and_which_splits_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m perception_rl.data.build crowdhuman"):
        datasets.source("crowdhuman", "validation", data_dir=tmp_path)
    build.main(
        [
            "crowdhuman",
            f"--manual_dir={write_crowdhuman(tmp_path / 'raw')}",
            f"--data_dir={tmp_path}",
        ]
    )
    with pytest.raises(FileNotFoundError, match=r"no split 'val'.*\['validation'\]"):
        datasets.source("crowdhuman", "val", data_dir=tmp_path)
    with pytest.raises(KeyError, match="names no dataset"):
        datasets.source("crowd_human", "val", data_dir=tmp_path)


def test_pipeline_tfds_source_reads_real_datasets_by_name(tmp_path):
    build.main(
        [
            "refcoco/refcoco_unc",
            f"--manual_dir={write_refer(tmp_path / 'raw')}",
            f"--data_dir={tmp_path}",
        ]
    )
    for name in ("refcoco/refcoco_unc", "refcoco_unc"):
        examples = pipeline.tfds_source(name, "train", str(tmp_path))
        assert len(examples) == 2 and examples[1]["query"] == "guy in red"
    batch = list(
        pipeline.make_dataset(
            examples, seed=0, shard_index=0, shard_count=1, shuffle=False, num_epochs=1
        )
    )
    np.testing.assert_array_equal(batch[0]["boxes"], [[2.5, 3.0, 22.5, 33.25]])


def test_detection_task_takes_label_names_from_the_dataset(tmp_path):
    build.main(
        ["coco_detection", f"--manual_dir={write_coco(tmp_path / 'raw')}", f"--data_dir={tmp_path}"]
    )
    data = {"source": "tfds", "tfds_config": "coco_detection", "data_dir": str(tmp_path)}
    config = {"task": "detection", "data": data}
    assert sources.task_from_config(config).label_names == ("person", "car", "toothbrush")
    config["task_options"] = {"label_names": ("a",)}
    assert sources.task_from_config(config).label_names == ("a",)
    assert sources.task_from_config({"task": "ocr", "data": data}).name == "ocr"


def _main(workdir, *args, timeout=600):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perception_rl.main",
            "--config=configs/smoke.py",
            f"--workdir={workdir}",
            "--config.mesh_shape=(1,1,1)",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _refcoco_112(root):
    """A refer fixture with 112x112 images (one visual-token bucket of the smoke config)."""
    write_refer(root)
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    for image in instances["images"]:
        image["width"] = image["height"] = 112
        write_image(root / "train2014" / image["file_name"], 112, 112)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    return root


def _crowdhuman_112(root):
    records = [
        {
            "ID": f"img{i}",
            "gtboxes": [
                {"tag": "person", "fbox": [10 + i, 10, 30, 60], "vbox": [10, 10, 20, 40]},
                {"tag": "mask", "fbox": [70, 0, 30, 30], "vbox": [70, 0, 30, 30]},
            ],
        }
        for i in range(3)
    ]
    root.mkdir(parents=True)
    with open(root / "annotation_val.odgt", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    for r in records:
        write_image(root / "Images" / f"{r['ID']}.jpg", 112, 112)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, task, raw, train_split, eval_split, eval_examples",
    [
        ("refcoco/refcoco_unc", "grounding", _refcoco_112, "train", "val", 1),
        ("crowdhuman", "crowd", _crowdhuman_112, "validation", "validation", 2),
    ],
)
def test_grpo_smoke_run_and_eval_through_the_cli(
    tmp_path, name, task, raw, train_split, eval_split, eval_examples
):
    """Build with the CLI, then `main --mode=train` and `--mode=eval` read it by name only."""
    out = tmp_path / "tfds"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "perception_rl.data.build",
            name,
            f"--manual_dir={raw(tmp_path / 'raw')}",
            f"--data_dir={out}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    data = [
        f"--config.task={task}",
        "--config.data.source=tfds",
        f"--config.data.tfds_config={name}",
        f"--config.data.data_dir={out}",
    ]
    _main(
        tmp_path / "run",
        *data,
        f"--config.data.split={train_split}",
        "--config.train.num_steps=1",
        "--config.train.checkpoint_every=1",
    )
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(metrics) == 1 and np.isfinite(metrics[0]["loss"])
    _main(
        tmp_path / "run",
        *data,
        "--mode=eval",
        f"--config.eval.split={eval_split}",
        f"--config.checkpoint={tmp_path / 'run' / 'policy'}",
        "--config.eval.num_examples=2",
    )
    summary = json.loads((tmp_path / "run" / "eval" / eval_split / "metrics.json").read_text())
    assert summary["task"] == task and summary["num_examples"] == eval_examples
    assert (tmp_path / "run" / "eval" / eval_split / "predictions.jsonl").exists()


_KILLED_BUILD = """
import sys, time
sys.path.insert(0, sys.argv[3])
from perception_rl.data import build
from perception_rl.data.builders import raw

image_bytes = raw.image_bytes


def slow_image_bytes(*args):  # Leaves time to kill the build half way.
    print("writing", flush=True)
    time.sleep(0.5)
    return image_bytes(*args)


raw.image_bytes = slow_image_bytes
build.main(["crowdhuman", "--manual_dir=" + sys.argv[1], "--data_dir=" + sys.argv[2]])
"""


def test_a_killed_build_reads_as_not_built_and_a_rerun_completes(tmp_path):
    records = [{"ID": f"i{n}", "gtboxes": []} for n in range(40)]
    raw_dir = write_crowdhuman(tmp_path / "raw", val=records)
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILD, str(raw_dir), str(out), str(ROOT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    written = 0
    while written < 3:  # Three examples in: the build is under way.
        line = child.stdout.readline()
        assert line, "the build ended before it could be killed"
        written += line.startswith("writing")
    child.kill()
    child.wait(timeout=60)
    assert not (out / "crowdhuman" / "full" / "1.0.0").exists()
    assert list((out / "crowdhuman" / "full").glob("incomplete*"))  # what the kill left
    with pytest.raises(FileNotFoundError, match="not built"):
        datasets.source("crowdhuman", "validation", data_dir=out)
    build.main(["crowdhuman", f"--manual_dir={raw_dir}", f"--data_dir={out}"])
    assert len(datasets.source("crowdhuman", "validation", data_dir=out)) == 40
