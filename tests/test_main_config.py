"""`python -m perception_rl.main` reports an unusable config as one clear line, exit status 2."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(workdir, *args):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )
    return subprocess.run(
        [sys.executable, "-m", "perception_rl.main", f"--workdir={workdir}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config=configs/smoke.py", "--config.rl.betta=0.1"],
            "unknown config key 'rl.betta'; did you mean 'beta'?",
        ),
        (["--config=configs/smoke.py", "--config.rl.beta=lots"], "--config.rl.beta=lots"),
        (["--config=configs/smoke.py", "--config.train.num_steps=2.5"], "num_steps"),
        (
            ["--config=configs/smoke.py", "--config.mesh_shape=(3,1,1)"],
            "mesh shape (3, 1, 1) needs 3 devices, found 1",
        ),
        (
            [
                "--config=configs/smoke.py",
                "--config.rl.prompts_per_step=3",
                "--config.mesh_shape=(1,1,1)",
                "--config.train.num_micro_batches=5",
            ],
            "do not split into 5 micro-batches",
        ),
        (
            ["--config=configs/smoke.py", "--config.task=segmentation"],
            "task='segmentation'; registered: counting",
        ),
        (["--config=configs/smoke.py", "--config.rl.loss_agg=mean"], "rl.loss_agg='mean'"),
        (["--config=configs/no_such_file.py"], "no_such_file.py"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "float-for-int",
        "mesh",
        "micro-batches",
        "task",
        "choice",
        "missing-file",
    ],
)
def test_config_errors_are_one_line(args, message, tmp_path):
    result = run_main(tmp_path, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("perception_rl.main: config error:"), lines
    assert message in lines[0]
    assert not any(tmp_path.iterdir())  # nothing ran


def test_eval_rescores_a_predictions_file_given_on_the_command_line(tmp_path):
    """`--config.eval.predictions_file` (a key of configs/common.py) scores without a model."""
    sys.path.insert(0, str(ROOT))
    from configs import synthetic as synthetic_config
    from perception_rl.data import synthetic

    options = dict(synthetic_config.get_config().data.synthetic)
    config = synthetic.SyntheticConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    )
    lines, counts = [], []
    for index in range(4):
        example = synthetic.generate_example("counting", index, split="validation", config=config)
        counts.append(len(example["boxes"]))
        boxes = example["boxes"].tolist()[1:] if counts[-1] > 1 else example["boxes"].tolist()
        lines.append(json.dumps({"image_id": index, "prediction": {"boxes": boxes}}))
    assert max(counts) > 1  # at least one miscount below
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(lines))
    result = run_main(
        tmp_path / "run",
        "--config=configs/synthetic.py",
        "--mode=eval",
        f"--config.eval.predictions_file={predictions}",
        "--config.eval.num_examples=4",
        "--config.eval.name=rescored",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "eval" / "rescored" / "metrics.json").read_text())
    expected = sum(c == 1 for c in counts) / 4  # boxes dropped where there were several
    assert saved["metrics"]["accuracy"] == expected


@pytest.fixture(scope="module")
def counting_tfds(tmp_path_factory):
    """A built `synthetic_perception/counting_tiny` TFDS dataset (counting examples)."""
    from perception_rl.data.builders import synthetic_perception as sp

    data_dir = tmp_path_factory.mktemp("tfds")
    config = sp.SyntheticPerceptionConfig(
        name="counting_tiny", task="counting", split_sizes={"train": 4, "validation": 2}
    )
    sp.SyntheticPerception(data_dir=str(data_dir), config=config).download_and_prepare()
    return data_dir


def _read_only_dir(tmp_path):
    """A read-only mount (root writes through chmod, so permissions alone prove nothing)."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    return path


SMOKE = "--config=configs/smoke.py"


def _error_case(name, tmp_path, counting_tfds):
    """(workdir, args, text the one line must contain) of each anticipated error."""
    workdir = tmp_path / "run"
    if name == "workdir-is-a-file":
        workdir.write_text("not a directory")
        return workdir, [SMOKE], f"--workdir={workdir} exists and is not a directory"
    if name == "read-only-workdir":
        workdir = _read_only_dir(tmp_path)
        return workdir / "run", [SMOKE], "is not writable: " + str(workdir / "run")
    if name == "missing-checkpoint":
        args = [SMOKE, "--mode=eval", "--config.checkpoint=/nonexistent"]
        return workdir, args, "checkpoint='/nonexistent': no such directory"
    if name == "eval-step":
        (tmp_path / "ckpt" / "3" / "params").mkdir(parents=True)
        args = [SMOKE, "--mode=eval", f"--config.checkpoint={tmp_path / 'ckpt'}"]
        return workdir, [*args, "--config.eval.step=5"], "eval.step=5: "
    if name == "jsonl-without-source-dir":
        args = [SMOKE, "--mode=eval", "--config.data.source=jsonl"]
        return workdir, args, "data.source='jsonl' needs data.source_dir"
    if name == "model-path":
        args = [SMOKE, "--config.model=/nonexistent"]
        return workdir, args, "model='/nonexistent' is neither an HF checkpoint directory"
    if name == "negative-steps":
        return workdir, [SMOKE, "--config.train.num_steps=-3"], "train.num_steps=-3; must be >= 1"
    if name == "zero-sft-steps":
        args = [SMOKE, "--mode=sft", "--config.sft.num_steps=0"]
        return workdir, args, "sft.num_steps=0; must be >= 1"
    tfds = [
        "--config.data.source=tfds",
        "--config.data.tfds_config=counting_tiny",
        f"--config.data.data_dir={counting_tfds}",
        "--config.task=ocr",
    ]
    expected = "holds 'counting' examples but config.task is 'ocr'"
    if name == "task-mismatch-train":
        return workdir, [SMOKE, *tfds], expected
    assert name == "task-mismatch-eval"
    return workdir, [SMOKE, "--mode=eval", *tfds, "--config.eval.split=validation"], expected


@pytest.mark.parametrize(
    "name",
    [
        "workdir-is-a-file",
        "read-only-workdir",
        "missing-checkpoint",
        "eval-step",
        "jsonl-without-source-dir",
        "model-path",
        "negative-steps",
        "zero-sft-steps",
        "task-mismatch-train",
        "task-mismatch-eval",
    ],
)
def test_anticipated_errors_are_one_line_and_exit_2(name, tmp_path, counting_tfds):
    workdir, args, expected = _error_case(name, tmp_path, counting_tfds)
    try:
        result = run_main(workdir, *args)
    finally:
        if name == "read-only-workdir":
            subprocess.run(["umount", str(workdir.parent)], check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("perception_rl.main: "), lines
    assert " error: " in lines[0] and expected in lines[0], lines[0]
    assert not (workdir / "checkpoints").exists()  # stopped before the first step
