"""grain pipeline: shuffling, host sharding, the transform hook, length buckets, exact resume."""

import itertools
import json

import grain
import numpy as np
import pytest

from perception_rl.data import pipeline, synthetic

N = 23  # Odd on purpose: the last batch and the host shards are uneven.
READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


class Source:
    """A cheap stand-in for the synthetic source: image sizes vary so buckets differ."""

    def __init__(self, n=N):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        side = 28 * (1 + index % 4)
        return {
            "image_id": index,
            "image": np.full((side, 28, 3), index % 256, np.uint8),
            "query": f"q{index}",
        }


def _ids(dataset):
    return [dataset[i]["image_id"] for i in range(len(dataset))]


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    def order(seed):
        return _ids(
            pipeline.make_dataset(Source(), seed=seed, num_epochs=2, shard_index=0, shard_count=1)
        )

    first, second = order(0)[:N], order(0)[N:]
    assert order(0) == order(0)
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second and first != list(range(N)) and order(1) != order(0)
    unshuffled = pipeline.make_dataset(
        Source(), shuffle=False, num_epochs=1, shard_index=0, shard_count=1
    )
    assert _ids(unshuffled) == list(range(N))


@pytest.mark.parametrize("num_hosts", [2, 3])
def test_host_shards_are_disjoint_and_cover_the_epoch(num_hosts):
    shards = [
        _ids(
            pipeline.make_dataset(
                Source(), seed=4, num_epochs=1, shard_index=host, shard_count=num_hosts
            )
        )
        for host in range(num_hosts)
    ]
    everything = [i for shard in shards for i in shard]
    assert sorted(everything) == list(range(N))  # Disjoint and covering.
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_dataset(Source(), shard_index=num_hosts, shard_count=num_hosts)


def test_default_sharding_follows_the_jax_process():
    dataset = pipeline.make_dataset(Source(), seed=4, num_epochs=1)
    assert _ids(dataset) == _ids(
        pipeline.make_dataset(Source(), seed=4, num_epochs=1, shard_index=0, shard_count=1)
    )


def _batches(dataset, batch_size=3, buckets=(1, 2, 4), **kwargs):
    return pipeline.BucketBatchDataset(
        dataset, batch_size, buckets=buckets, read_options=READ, **kwargs
    )


def test_buckets_group_lengths_and_finite_streams_emit_every_example_once():
    dataset = pipeline.make_dataset(Source(), seed=1, num_epochs=1, shard_index=0, shard_count=1)
    batches = list(_batches(dataset, buckets=(1, 3, 4)))
    for batch in batches:
        lengths = {pipeline.image_patches({"image": image}) for image in batch["image"]}
        assert max(lengths) <= batch["bucket_length"]
        assert batch["bucket_length"] == 1 or min(lengths) > {3: 1, 4: 3}[batch["bucket_length"]]
    seen = np.concatenate([batch["image_id"] for batch in batches])
    assert sorted(seen) == list(range(N))
    sizes = [len(batch["image_id"]) for batch in batches]
    assert sizes.count(3) >= len(sizes) - 3  # Only the per-bucket remainders are smaller.
    kept = list(_batches(dataset, buckets=(1, 3, 4), drop_remainder=True))
    assert all(len(batch["image_id"]) == 3 for batch in kept)
    assert len(kept) == sizes.count(3)


def test_synthetic_source_end_to_end():
    source = synthetic.SyntheticSource("grounding", "validation", 10)
    dataset = pipeline.make_dataset(
        source, shuffle=False, num_epochs=1, shard_index=0, shard_count=1
    )
    batches = list(_batches(dataset, batch_size=4, buckets=(16, 32, 64)))
    assert sorted(i for batch in batches for i in batch["image_id"]) == list(range(10))
    first = next(batch for batch in batches if 0 in batch["image_id"])
    position = list(first["image_id"]).index(0)
    np.testing.assert_array_equal(first["boxes"][position], source[0]["boxes"])
    assert first["query"][position] == source[0]["query"]


def test_collate_stacks_numbers_and_lists_arrays_and_strings():
    examples = [Source()[0], Source()[4], Source()[1]]
    batch = pipeline.collate(examples, 8)
    assert batch.keys() == {"bucket_length", "image_id", "image", "query"}
    assert batch["bucket_length"] == 8
    np.testing.assert_array_equal(batch["image_id"], [0, 4, 1])
    assert batch["query"] == ["q0", "q4", "q1"]
    assert [image.shape for image in batch["image"]] == [(28, 28, 3), (28, 28, 3), (56, 28, 3)]


def test_overlong_examples_and_bad_buckets_are_rejected():
    dataset = pipeline.make_dataset(Source(), num_epochs=1, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="above the largest bucket 2"):
        list(_batches(dataset, buckets=(1, 2)))
    with pytest.raises(ValueError, match="strictly increasing"):
        _batches(dataset, buckets=(4, 2))


def _prompt(example):  # Stands in for a task's prompt formatter.
    return {**example, "prompt": f"Count the {example['query']}"}


def _training_batches(host=0, hosts=2):
    dataset = pipeline.make_dataset(
        Source(), seed=7, shard_index=host, shard_count=hosts, transform=_prompt
    )
    return _batches(dataset, batch_size=2)


def _assert_same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            for u, v in zip(
                x[key] if isinstance(x[key], list) else [x[key]],
                y[key] if isinstance(y[key], list) else [y[key]],
                strict=True,
            ):
                np.testing.assert_array_equal(u, v, err_msg=key)


def test_resume_from_saved_state_yields_the_same_batches():
    reference = iter(_training_batches())
    uninterrupted = [next(reference) for _ in range(30)]  # Past the first epoch end.
    assert all(b["prompt"] == [f"Count the q{i}" for i in b["image_id"]] for b in uninterrupted)
    buffered = 0
    for k in (0, 3, 4, 13):
        iterator = iter(_training_batches())
        for _ in range(k):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))  # What a checkpoint stores.
        buffered += any(state["pending"])
        restored = iter(_training_batches())  # A fresh process would rebuild the pipeline.
        restored.set_state(state)
        _assert_same_batches(itertools.islice(restored, 30 - k), uninterrupted[k:])
    assert buffered >= 2, "resumed only from empty buckets: a weak test"


def test_resume_through_an_orbax_checkpoint(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    iterator = iter(_training_batches(host=1))
    for _ in range(8):
        next(iterator)
    assert any(iterator.get_state()["pending"])
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(8, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = [next(iterator) for _ in range(6)]
    restored = iter(_training_batches(host=1))
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.restore(
            8, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored))
        )
    _assert_same_batches([next(restored) for _ in range(6)], expected)


def test_mismatched_state_is_rejected():
    state = iter(_training_batches()).get_state()
    other = iter(
        _batches(pipeline.make_dataset(Source(), shard_index=0, shard_count=1), buckets=(4,))
    )
    with pytest.raises(ValueError, match="3 buckets"):
        other.set_state(state)
