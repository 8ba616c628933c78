"""Kill-and-resume through the CLI: SIGKILL mid-run then restart reproduces the uninterrupted
run's metrics exactly; SIGTERM checkpoints the current step and exits cleanly."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from perception_rl.rl.metric_writer import PERF_PREFIX, read_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 8
# The device setup of test_train_multihost's one-process run, whose compiled programs the
# persistent cache then serves to these runs.
ARGS = [
    "--config=configs/smoke.py",
    f"--config.train.num_steps={STEPS}",
    "--config.train.checkpoint_every=1",
    "--config.mesh_shape=(2,2,1)",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Four CPU devices; a persistent compilation cache shared by the runs of this session."""
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    return dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def launch(workdir, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "perception_rl.main", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def wait_for_steps(workdir, steps: int, process: subprocess.Popen) -> None:
    path = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        if process.poll() is not None:
            pytest.fail(f"run ended before step {steps}: {process.stderr.read()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"no step {steps} within the deadline")


def deterministic(workdir) -> list[dict]:
    """Metrics without wall-clock figures: a pure function of config and seed."""
    return [
        {k: v for k, v in r.items() if not k.startswith(PERF_PREFIX)}
        for r in read_metrics(workdir / "metrics.jsonl")
    ]


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    finish(launch(workdir, env))
    metrics = deterministic(workdir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    return metrics


def test_sigkill_then_restart_reproduces_the_uninterrupted_run(reference, env, tmp_path):
    process = launch(tmp_path, env)
    wait_for_steps(tmp_path, 3, process)
    assert process.poll() is None, "the run finished before it could be killed"
    process.kill()
    process.communicate()
    killed_after = len(read_metrics(tmp_path / "metrics.jsonl"))
    assert killed_after < STEPS
    assert checkpoint_steps(tmp_path), "no finished checkpoint to resume from"
    finish(launch(tmp_path, env))
    assert deterministic(tmp_path) == reference  # every step, bit for bit
    assert checkpoint_steps(tmp_path)[-1] == STEPS


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(reference, env, tmp_path):
    process = launch(tmp_path, env)
    wait_for_steps(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    err = finish(process)
    metrics = deterministic(tmp_path)
    last = metrics[-1]["step"]
    assert last < STEPS and f"stopped by SIGTERM after step {last}" in err
    assert checkpoint_steps(tmp_path)[-1] == last
    assert not (tmp_path / "policy").exists()  # an interrupted run exports nothing
    assert metrics == reference[:last]
