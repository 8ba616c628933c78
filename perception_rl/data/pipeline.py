"""grain input pipeline: source → shuffle → repeat → host shard → transform → bucketed batches.

The shape follows data_eval.md §4.4 (MaxText/Tunix style):

    dataset = make_dataset(source, seed=0, transform=task_prompt_fn)      # grain.MapDataset
    iterator = iter(BucketBatchDataset(dataset, batch_size=8, buckets=(64, 128, 256),
                                       length_fn=lambda ex: len(ex["input_ids"])))
    batch = next(iterator)
    state = iterator.get_state()      # JSON-able; or orbax: grain.checkpoint.CheckpointSave(it)
    iterator.set_state(state)         # exact resume: the same batches follow

Every stage before batching is a random-access `MapDataset`, so the whole data order is a pure
function of (source, seed, shard): each host reads the strided slice
`[process_index::process_count]` of the same shuffled, repeated stream, and the shards of an
epoch are disjoint and cover it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

Example = dict[str, Any]
PATCH = 28  # Qwen-VL's resize factor: one merged visual token per 28×28 pixels.

# Data is cheap next to a GRPO step; a deep read-ahead only wastes work after each restore.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


def make_dataset(
    source: Sequence[Example] | grain.MapDataset,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    transform: Callable[[Example], Example] | None = None,
) -> grain.MapDataset:
    """The per-host example stream, before batching.

    Args:
      source: random-access examples: a `synthetic.SyntheticSource`, `tfds_source(...)`, or any
        sequence/MapDataset.
      seed: shuffle seed; each epoch is reshuffled from it.
      shuffle: False for evaluation, to keep the source order.
      num_epochs: passes over the source; None repeats forever (training).
      shard_index: this host's shard; defaults to `jax.process_index()`.
      shard_count: number of shards; defaults to `jax.process_count()`.
      transform: example -> example, e.g. the task's prompt formatter. It must be a
        deterministic function of the example, because a restore recomputes buffered examples.

    Returns:
      A `grain.MapDataset` of this host's examples.
    """
    if shard_index is None or shard_count is None:
        import jax  # Only when the caller leaves sharding to the JAX runtime.

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count}).")
    dataset = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    # Strided, after shuffle and repeat: every epoch splits evenly across hosts.
    dataset = dataset[shard_index::shard_count]
    return dataset.map(transform) if transform is not None else dataset


def tfds_source(config_name: str, split: str, data_dir: str) -> grain.MapDataset:
    """Examples of a built TFDS dataset, read without TF: a real dataset of
    `perception_rl.data.datasets` (`crowdhuman`, `refcoco/refcoco_unc`, ...) when the name is
    one, else the `synthetic_perception/<config>` config of that name."""
    import tensorflow_datasets as tfds  # The `[data]` extra; the synthetic path needs no TFDS.

    from perception_rl.data import datasets

    if datasets.is_dataset(config_name):
        return grain.MapDataset.source(datasets.source(config_name, split, data_dir=data_dir))

    from perception_rl.data.builders import synthetic_perception  # Registers the builder.

    records = tfds.data_source(
        f"{synthetic_perception.NAME}/{config_name}", split=split, data_dir=data_dir
    )
    return grain.MapDataset.source(records).map(synthetic_perception.to_example)


def image_patches(example: Example) -> int:
    """Default bucketing length: the image's merged visual tokens, `⌈H/28⌉·⌈W/28⌉`."""
    height, width = example["image"].shape[:2]
    return -(-height // PATCH) * -(-width // PATCH)


def collate(examples: list[Example], bucket_length: int | None) -> dict[str, Any]:
    """Default batch function: numbers become arrays [B]; arrays and strings stay per-example lists.

    Lists keep every batch the same structure whatever the shapes inside it; the consumer pads
    ragged fields (images, boxes, token ids) to `bucket_length`, which the batch carries.
    """
    batch = {"bucket_length": bucket_length}
    for key in examples[0]:
        values = [example[key] for example in examples]
        scalar = all(isinstance(v, (int, float, np.number, np.bool_)) for v in values)
        batch[key] = np.asarray(values) if scalar else values
    return batch


class BucketBatchDataset(grain.IterDataset):
    """Batches of examples whose lengths fall in the same bucket, with exact resume.

    A length goes to the smallest bucket boundary at or above it, and a batch is emitted as soon
    as one bucket holds `batch_size` examples, so batches keep the stream's order per bucket and
    every batch pads to one of a few static lengths. The iterator state is the read position
    plus the indices of the examples waiting in buckets; a restore re-reads those by index from
    the random-access parent, so it needs no copy of the examples.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        batch_size: int,
        *,
        buckets: Sequence[int] | None = None,
        length_fn: Callable[[Example], int] = image_patches,
        batch_fn: Callable[[list[Example], int | None], Any] = collate,
        drop_remainder: bool = False,
        read_options: grain.ReadOptions = DEFAULT_READ_OPTIONS,
    ):
        """Initialises the dataset.

        Args:
          parent: the example stream, e.g. from `make_dataset`.
          batch_size: examples per batch (per host).
          buckets: increasing length boundaries; None batches everything together.
          length_fn: example -> length compared with the boundaries.
          batch_fn: (examples, bucket boundary or None) -> batch.
          drop_remainder: at the end of a finite stream, drop part-filled buckets instead of
            emitting them as smaller batches.
          read_options: threads and read-ahead of the element reader.
        """
        super().__init__(parent)
        if buckets is not None and list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must be strictly increasing, got {buckets}.")
        self.batch_size = batch_size
        self.buckets = tuple(buckets) if buckets is not None else (None,)
        self.length_fn, self.batch_fn = length_fn, batch_fn
        self.drop_remainder, self.read_options = drop_remainder, read_options

    def bucket_of(self, example: Example) -> int:
        """Position in `buckets` of the example's bucket."""
        if self.buckets == (None,):
            return 0
        length = self.length_fn(example)
        position = bisect.bisect_left(self.buckets, length)
        if position == len(self.buckets):
            raise ValueError(
                f"Example {example.get('image_id')} has length {length}, above the "
                f"largest bucket {self.buckets[-1]}."
            )
        return position

    def __iter__(self) -> _BucketBatchIterator:
        return _BucketBatchIterator(self)

    def __str__(self) -> str:
        return f"BucketBatchDataset(batch_size={self.batch_size}, buckets={self.buckets})"


class _BucketBatchIterator(grain.DatasetIterator):
    """Iterator of `BucketBatchDataset`; state: `{"reader": ..., "pending": [[index, ...]]}`."""

    def __init__(self, dataset: BucketBatchDataset):
        self._dataset = dataset
        self._examples = dataset.parents[0]
        indexed = self._examples.map_with_index(lambda index, example: (index, example))
        super().__init__(indexed.to_iter_dataset(dataset.read_options).__iter__())
        self._pending = [[] for _ in dataset.buckets]  # Per bucket: [(index, example)].

    def __next__(self) -> Any:
        while True:
            try:
                index, example = next(self._parent)
            except StopIteration:
                return self._flush()
            bucket = self._dataset.bucket_of(example)
            self._pending[bucket].append((index, example))
            if len(self._pending[bucket]) == self._dataset.batch_size:
                return self._emit(bucket)

    def _flush(self) -> Any:
        """At the end of the stream: the part-filled buckets, smallest first."""
        for bucket, pending in enumerate(self._pending):
            if pending and not self._dataset.drop_remainder:
                return self._emit(bucket)
        self._pending = [[] for _ in self._dataset.buckets]
        raise StopIteration

    def _emit(self, bucket: int) -> Any:
        examples = [example for _, example in self._pending[bucket]]
        self._pending[bucket] = []
        return self._dataset.batch_fn(examples, self._dataset.buckets[bucket])

    def get_state(self) -> dict[str, Any]:
        return {
            "reader": self._parent.get_state(),
            "pending": [[index for index, _ in pending] for pending in self._pending],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["pending"]) != len(self._pending):
            raise ValueError(
                f"State has {len(state['pending'])} buckets, this iterator {len(self._pending)}."
            )
        self._parent.set_state(state["reader"])
        self._pending = [
            [(index, self._examples[index]) for index in indices] for indices in state["pending"]
        ]

    def __str__(self) -> str:
        return f"BucketBatchIterator({self._dataset})"
