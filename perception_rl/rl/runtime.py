"""What every training run is built from besides the policy (`perception_rl.policy`): config
checks, the mesh, the prompt stream and the stop signal. Shared by the GRPO trainer
(`rl.trainer`) and SFT (`rl.sft`).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from perception_rl.data import pipeline
from perception_rl.errors import EXIT_INTERRUPTED, ConfigError
from perception_rl.parallel import hosts, make_mesh
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import grpo
from perception_rl.rl.train_step import BATCH_AXES


# ---------------------------------------------------------------------------------- checks
def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; expected one of {', '.join(map(str, choices))}.")


def batch_shards(mesh: Mesh) -> int:
    """Devices the batch axis is split over (data × fsdp)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch(name: str, prompts: int, group_size: int, micro_batches: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the batch shards and the micro-batches."""
    shards = batch_shards(mesh)
    if prompts % shards:
        raise ConfigError(
            f"{name}={prompts} prompts do not split over the {shards} batch "
            f"shards (data x fsdp) of mesh {dict(mesh.shape)}."
        )
    rows = prompts * group_size
    if rows % (micro_batches * shards):
        raise ConfigError(
            f"{rows} rows ({name} x {group_size}) do not split into "
            f"{micro_batches} micro-batches over {shards} batch shards."
        )


def loss_settings(rl) -> grpo.LossSettings:
    """The GRPO objective's settings of the config's `rl` section, checked."""
    try:
        return grpo.LossSettings(
            beta=rl.beta,
            epsilon_low=rl.epsilon_low,
            epsilon_high=rl.epsilon_high,
            kl_estimator=rl.kl_estimator,
            loss_agg=rl.loss_agg,
            max_tokens_norm=rl.max_tokens_norm,
        )
    except ValueError as e:
        raise ConfigError(f"rl.{e}") from None


def check_rl(rl) -> None:
    """Choices and ranges of the GRPO section."""
    loss_settings(rl)
    _choice("rl.advantage_estimator", rl.advantage_estimator, grpo.ADVANTAGE_ESTIMATORS)
    if rl.num_generations < 2 and rl.advantage_estimator == "grpo":
        raise ConfigError("rl.num_generations must be >= 2 for grpo advantages.")
    if rl.num_iterations < 1:
        raise ConfigError(f"rl.num_iterations={rl.num_iterations} must be >= 1.")


def build_mesh(config) -> Mesh:
    """The config's ('data', 'fsdp', 'tensor') mesh over all devices of all hosts."""
    shape = tuple(config.mesh_shape)
    if len(shape) != 3 or not all(isinstance(s, int) for s in shape):
        raise ConfigError(
            f"mesh_shape={shape!r}; expected three ints (data, fsdp, tensor), "
            "one of them may be -1."
        )
    try:
        return make_mesh(shape)
    except ValueError as e:
        raise ConfigError(f"mesh_shape: {e}") from None


# ------------------------------------------------------------------------------------ data
def training_source(config, task: Any, source: Any = None) -> Any:
    """The training examples (`source`, else `data.sources.example_source` of `config.data`),
    checked against the task before anything is loaded or compiled."""
    from perception_rl.data import sources

    if source is None:
        # data.num_examples sizes the generated set; of a built dataset the first
        # data.first_examples are read (a paper's training-set size), else all of it.
        synthetic = config.data.source == "synthetic"
        limit = config.data.num_examples if synthetic else config.data.get("first_examples")
        source = sources.example_source(config, task, config.data.split, limit)
    sources.check_source(source, task, f"data ({config.data.source}, {config.data.split})")
    return source


def prompt_batches(config, formatter: batch_lib.PromptFormatter, batch_size: int, source: Any):
    """This host's iterator of prompt-record batches (checkpointable grain iterator).

    Args:
        config: the run config (`data` section: seed, buckets).
        formatter: example → prompt record (runs in grain's read threads).
        batch_size: records per batch on this host.
        source: random-access examples (`training_source`).
    """
    dataset = pipeline.make_dataset(source, seed=config.data.seed, transform=formatter)
    buckets = tuple(config.data.buckets) or None
    batches = pipeline.BucketBatchDataset(
        dataset,
        batch_size,
        buckets=buckets,
        length_fn=batch_lib.prompt_record_length,
        batch_fn=batch_lib.collate_records,
    )
    return iter(batches)


def per_host(global_size: int, name: str) -> int:
    """This host's share of a global batch size."""
    hosts = jax.process_count()
    if global_size % hosts:
        raise ConfigError(f"{name}={global_size} does not split over {hosts} hosts.")
    return global_size // hosts


# ------------------------------------------------------------------------------- stopping
class StopSignal:
    """SIGTERM (a preemption notice) asks the loop to checkpoint and exit after this step.

    Every host must stop at the same step, so `requested()` takes the maximum over hosts. The
    signal is honoured even when no step boundary comes (a step longer than the scheduler's
    notice, a hung write): `grace_s` seconds after the first SIGTERM, or at a second one, the
    process exits at once with `EXIT_INTERRUPTED`; the last finished checkpoint is intact.
    """

    def __init__(self, grace_s: float = 120.0):
        self._received = False
        self._previous = None
        self.grace_s = float(grace_s)
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signal handling to the caller
            pass

    def _handle(self, signum, frame):
        del signum, frame
        if self._received:
            self._exit_now("a second SIGTERM")
        self._received = True
        timer = threading.Timer(
            self.grace_s, self._exit_now, (f"no step ended {self.grace_s:g} s after SIGTERM",)
        )
        timer.daemon = True
        timer.start()

    @staticmethod
    def _exit_now(why: str) -> None:
        print(
            f"perception_rl: stopping at once ({why}); rerun to resume from the last checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_INTERRUPTED)

    def requested(self) -> bool:
        return bool(hosts.host_max(np.asarray([int(self._received)]))[0])

    def restore(self) -> None:
        """Puts back the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
