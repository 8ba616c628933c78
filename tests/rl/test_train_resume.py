"""Kill-and-resume through the CLI: SIGKILL mid-run then restart reproduces the uninterrupted
run's metrics exactly; SIGTERM checkpoints the current step and exits with status 75; a full
disk stops the run with one line and status 2, and a rerun with space resumes exactly; an
unreadable newest checkpoint falls back to the previous one."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from perception_rl.errors import EXIT_INTERRUPTED
from perception_rl.rl.metric_writer import PERF_PREFIX, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
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


def finish(process: subprocess.Popen, status: int = 0) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == status, err[-3000:]
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
def reference_run(tmp_path_factory, env):
    """(metrics, workdir) of the uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    finish(launch(workdir, env))
    metrics = deterministic(workdir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    return metrics, workdir


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[0]


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


def test_sigterm_checkpoints_the_current_step_and_exits_75(reference, env, tmp_path):
    process = launch(tmp_path, env)
    wait_for_steps(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    err = finish(process, EXIT_INTERRUPTED)
    metrics = deterministic(tmp_path)
    last = metrics[-1]["step"]
    assert last < STEPS and f"stopped by SIGTERM after step {last}" in err
    assert checkpoint_steps(tmp_path)[-1] == last
    assert not (tmp_path / "policy").exists()  # an interrupted run exports nothing
    assert metrics == reference[:last]


def _copy_of_finished_run(reference_run, tmp_path) -> pathlib.Path:
    """The uninterrupted run's workdir (checkpoints 7 and 8) without its export."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run[1], workdir)
    shutil.rmtree(workdir / "policy")
    return workdir


def _corrupt(checkpoint: pathlib.Path, part: str) -> None:
    if part == "params":  # the largest array file, cut in half
        target = max(
            (p for p in (checkpoint / "params").rglob("*") if p.is_file()),
            key=lambda p: p.stat().st_size,
        )
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:  # an empty data-iterator state
        next((checkpoint / "data").rglob("*.json")).write_text("")


@pytest.mark.parametrize("part", ["params", "data"])
def test_unreadable_newest_checkpoint_resumes_from_the_previous(reference_run, env, tmp_path, part):
    workdir = _copy_of_finished_run(reference_run, tmp_path)
    assert checkpoint_steps(workdir) == [STEPS - 1, STEPS]
    _corrupt(workdir / "checkpoints" / str(STEPS), part)
    err = finish(launch(workdir, env))
    assert f"checkpoint step {STEPS} in" in err and "unreadable" in err
    assert deterministic(workdir) == reference_run[0]  # step 8 redone from step 7, bit for bit
    assert (workdir / "checkpoints" / f"{STEPS}.unreadable").is_dir()  # set aside, not deleted
    assert checkpoint_steps(workdir)[-1] == STEPS


def test_no_readable_checkpoint_names_the_directory_to_delete(reference_run, env, tmp_path):
    workdir = _copy_of_finished_run(reference_run, tmp_path)
    for step in checkpoint_steps(workdir):
        _corrupt(workdir / "checkpoints" / str(step), "data")
    err = finish(launch(workdir, env), 2)
    line = err.strip().splitlines()[-1]
    assert line.startswith("perception_rl.main: checkpoint error: no readable checkpoint in")
    assert "delete that directory" in line and str(workdir / "checkpoints") in line


def _mount_tmpfs(path: pathlib.Path, size: str, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_full_disk_stops_the_run_with_one_line_and_a_rerun_resumes(reference, env, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount_tmpfs(disk, "4m")  # room for one checkpoint of the tiny policy, not two
    try:
        began = time.monotonic()
        err = finish(launch(disk, env), 2)
        assert time.monotonic() - began < 240
        # The checkpoint save, the metrics file or TensorBoard may meet the full disk first;
        # whichever does, the run ends with one error line naming the cause.
        errors = [line for line in err.splitlines() if line.startswith("perception_rl.main: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0], err[-3000:]
        assert not (disk / "policy").exists()
        _mount_tmpfs(disk, "64m", remount=True)  # space freed
        finish(launch(disk, env))
        assert deterministic(disk) == reference
    finally:
        subprocess.run(["umount", str(disk)], check=False)


_SIGNAL_SCRIPT = """
import os, signal, sys, time
from perception_rl.rl.runtime import StopSignal
stop = StopSignal(grace_s=float(sys.argv[1]))
os.kill(os.getpid(), signal.SIGTERM)
if sys.argv[2] == "twice":
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
time.sleep(60)  # a step that never ends
"""


@pytest.mark.parametrize("grace, times", [(0.5, "once"), (600, "twice")])
def test_sigterm_is_honoured_without_a_step_boundary(grace, times):
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_SCRIPT, str(grace), times],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert time.monotonic() - began < 50
    assert "stopping at once" in done.stderr
