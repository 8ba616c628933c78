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
the previous checkpoint. A save that fails (a full disk) raises `CheckpointError` at the next
save or wait, which stops the run. `restore_latest` tries the newest step first; a step that
cannot be read (truncated array files, an empty iterator state) is logged, renamed
`<step>.unreadable` and the previous kept step is tried; with none readable the error names the
directory to delete.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from perception_rl.errors import CheckpointError, one_line

UNREADABLE_SUFFIX = ".unreadable"


def failure_cause(error: BaseException) -> str:
    """The short reason of an orbax / tensorstore error (their messages run to pages)."""
    text = str(error) or type(error).__name__
    if "No space left on device" in text or "os_error_code='28'" in text:
        return "No space left on device"
    return one_line(f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}", 300)


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
        try:
            self._manager.save(step, args=args, force=True)
        except Exception as e:  # this save, or the previous asynchronous one, failed
            raise CheckpointError(
                f"saving a checkpoint in {self.directory} failed (step {step} or the one "
                f"before): {failure_cause(e)}"
            ) from e

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

    def restore_latest(
        self, abstract_state: Any, data_iterator: Any
    ) -> tuple[Any, jax.Array, int] | None:
        """(state, RNG key, step) of the newest readable checkpoint, or None when there is none.

        Unreadable steps are logged and set aside (`<step>.unreadable`, nothing is deleted) once
        an older step restores, so the run can write those steps again.

        Raises:
            CheckpointError: checkpoints exist but none can be read; names the directory.
        """
        unreadable = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, rng, _ = self.restore(step, abstract_state, data_iterator)
                error = None
            except Exception as e:  # noqa: BLE001 - truncated arrays, empty JSON, missing items
                error = e
            if _any_host(error is not None):
                cause = failure_cause(error) if error is not None else "another host failed"
                logging.warning(
                    "checkpoint step %d in %s is unreadable: %s", step, self.directory, cause
                )
                unreadable.append((step, cause))
                continue
            if unreadable:
                self._set_aside([s for s, _ in unreadable])
                logging.warning("resumed from step %d instead of %d", step, unreadable[0][0])
            return state, rng, step
        if unreadable:
            causes = "; ".join(f"step {s}: {c}" for s, c in unreadable)
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} ({causes}); delete that directory "
                "to start the run over."
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                path = os.path.join(self.directory, str(step))
                os.replace(path, path + UNREADABLE_SUFFIX)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("perception_rl_checkpoint_set_aside")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until the pending save is written; raises `CheckpointError` if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"saving a checkpoint in {self.directory} failed: {failure_cause(e)}"
            ) from e

    def close(self) -> None:
        """Finishes pending saves and releases orbax's threads. Never raises: a failed save has
        already stopped the run through `save` / `wait`, and a second error would hide it."""
        for finish in (self._manager.wait_until_finished, self._manager.close):
            try:
                finish()
            except Exception as e:  # noqa: BLE001 - the run's own error comes first
                logging.warning("closing checkpoints in %s: %s", self.directory, failure_cause(e))


def _any_host(flag: bool) -> bool:
    """True on every host when `flag` is true on any (all hosts restore the same step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.asarray([int(flag)]))))
