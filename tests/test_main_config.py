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
            "Unknown task 'segmentation'",
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
