"""Two local JAX processes (jax.distributed on 127.0.0.1, gloo collectives) train exactly like one
process holding the same global batch: same rollouts, rewards and losses."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from perception_rl.rl.metric_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
# data 2 x fsdp 2: the batch and the parameters are both split across the two processes.
ARGS = ["--config=configs/smoke.py", "--config.train.num_steps=2", "--config.mesh_shape=(2,2,1)"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, devices: int, **env) -> subprocess.Popen:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "perception_rl.main", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_give_the_losses_of_one(tmp_path, tmp_path_factory):
    port = free_port()
    two = [
        launch(
            tmp_path / "two",
            2,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    # The one-process run fills the session's compilation cache for test_train_resume.
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    one = launch(
        tmp_path / "one",
        4,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    for process in (*two, one):
        _, err = process.communicate(timeout=400)
        assert process.returncode == 0, err[-3000:]
    multi, single = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("two", "one"))
    assert [m["step"] for m in multi] == [m["step"] for m in single] == [1, 2]
    for a, b in zip(multi, single):
        # Sampling runs on identical inputs, so rollouts and rewards match exactly; the update
        # sums gradients across processes with gloo, in another order than one process does.
        assert a["reward/total/mean"] == b["reward/total/mean"]
        assert a["completion/length_mean"] == b["completion/length_mean"]
        for name in ("loss", "kl", "grad_norm", "entropy", "advantage/abs_mean"):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7, err_msg=name)
    data = tmp_path / "two" / "checkpoints" / "2" / "data"
    assert {p.name for p in data.glob("process_*.json")} == {
        "process_0-of-2.json",
        "process_1-of-2.json",
    }
    assert (tmp_path / "two" / "policy" / "model.safetensors").exists()
