"""Orbax checkpoints of a training run: train state, RNG, data iterator and a JSON record.

One checkpoint is the directory `<workdir>/checkpoints/<step>/` with four items:

    params  the policy parameters as a nested dict (`nnx.to_pure_dict` layout), which is what
            `perception_rl.eval.runner` restores when `config.checkpoint` points here
    train   the rest of the `TrainState` (optimiser state, step, skipped) and the RNG key data
    data    each host's grain iterator state (`process_<i>-of-<n>.json`), for exact resume
    meta    JSON: the step and anything the trainer wants to find again

Arrays are written shard by shard from every host and restored straight into the mesh's
shardings (no host copy of the full model).
A save is atomic (orbax finalises a temporary directory), so a run killed mid-save resumes from
the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every` steps (and on demand) and restores the latest checkpoint.

    Attributes:
        directory: where the step directories live.
        every: save interval in steps.
    """

    def __init__(self, directory: str, *, every: int, keep: int = 2):
        self.directory, self.every = os.path.abspath(directory), every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "train", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(
        self, step: int, state: Any, rng: jax.Array, data_iterator: Any, meta: dict | None = None
    ) -> None:
        """Writes checkpoint `step` (asynchronously; `wait` or `close` to finish)."""
        train = {
            "step": state.step,
            "skipped": state.skipped,
            "opt_state": state.opt_state,
            "rng": np.asarray(jax.random.key_data(rng)),
        }
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(train),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave({"step": step, **(meta or {})}),
        )
        self._manager.save(step, args=args, force=True)

    def restore(
        self, step: int, abstract_state: Any, data_iterator: Any
    ) -> tuple[Any, jax.Array, dict]:
        """Reads checkpoint `step` into the shardings of `abstract_state`.

        Args:
            step: the step to restore.
            abstract_state: ShapeDtypeStructs with shardings (`TrainStep.abstract_state`).
            data_iterator: the run's fresh data iterator; its state is set in place.

        Returns:
            (train state, RNG key, meta dict).
        """
        key_data = np.zeros_like(jax.random.key_data(jax.random.key(0)))  # restored as numpy
        train = {
            "step": abstract_state.step,
            "skipped": abstract_state.skipped,
            "opt_state": abstract_state.opt_state,
            "rng": key_data,
        }
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                train=ocp.args.StandardRestore(train),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        train = restored.train
        state = abstract_state.replace(
            step=train["step"],
            skipped=train["skipped"],
            params=restored.params,
            opt_state=train["opt_state"],
        )
        return state, jax.random.wrap_key_data(np.asarray(train["rng"])), dict(restored.meta)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
