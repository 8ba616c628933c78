"""`python -m perception_rl.main` reports an unusable config as one clear line, exit status 2."""

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
