"""Eval runner: tiny random checkpoint end to end, oracle completions, orbax restore, bad input."""

import importlib.util
import json
import pathlib
import shutil
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

from perception_rl import policy as policy_lib
from perception_rl import rewards
from perception_rl.data import sources, synthetic
from perception_rl.errors import CheckpointError, DataError
from perception_rl.eval import runner
from perception_rl.metrics import RecordError
from perception_rl.models import QwenVL, save_pretrained
from perception_rl.models.qwen_vl import tiny
from perception_rl.processing import TINY_TOKEN_IDS, tiny_tokenizer_path
from perception_rl.sampling import SampleResult
from perception_rl.tasks import FAMILIES, TASKS, ImageGeometry, get_task

ROOT = pathlib.Path(__file__).parents[2]


def make_config(**fields):
    """configs/common.py (where the runner's defaults live), shortened for the tiny model."""
    spec = importlib.util.spec_from_file_location("common_config", ROOT / "configs" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    config = common.get_config()
    config.update_from_flattened_dict(
        {
            "task": "counting",
            "eval.split": "val",
            "eval.num_examples": 6,
            "eval.batch_size": 4,
            "eval.max_new_tokens": 12,
            "eval.gallery_size": 2,
        }
    )
    config.update_from_flattened_dict(fields)
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny Qwen2.5-VL saved as an HF directory with the tiny tokenizer."""
    model = QwenVL(tiny("qwen2_5_vl", vocab_size=1000, **TINY_TOKEN_IDS), rngs=nnx.Rngs(0))
    path = tmp_path_factory.mktemp("tiny_hf")
    save_pretrained(model, str(path))
    # save_pretrained writes tokens_per_second=2.0; transformers 5.x (AutoTokenizer reads
    # config.json) only accepts an int there. Reported to the models owner.
    config = json.loads((path / "config.json").read_text())
    config["vision_config"]["tokens_per_second"] = int(config["vision_config"]["tokens_per_second"])
    (path / "config.json").write_text(json.dumps(config))
    for file in tiny_tokenizer_path().iterdir():
        shutil.copy(file, path)
    return model, path


def test_random_checkpoint_end_to_end(checkpoint, tmp_path, capsys):
    model, hf_dir = checkpoint
    result = runner.evaluate(make_config(checkpoint=str(hf_dir)), tmp_path)
    records = runner.read_predictions(result.predictions_path)
    assert [r["image_id"] for r in records] == list(range(6))
    # Each record's reward is the training reward of its completion.
    task = get_task("counting")
    for record in records:
        example = synthetic.generate_example("counting", record["image_id"], split="val")
        geometry = ImageGeometry(tuple(record["image_hw"]), tuple(record["resized_hw"]))
        assert geometry.original_hw == example["image"].shape[:2]
        expected = rewards.score(
            "counting",
            [record["completion"]],
            [task.target(example, geometry, "qwen2_5_vl")],
            group_size=1,
        )
        assert record["reward"] == pytest.approx(float(expected[0]))
        assert record["prediction"] == task.predict(record["completion"], geometry, "qwen2_5_vl")
    summary = json.loads(result.metrics_path.read_text())
    assert (
        summary["metrics"]
        == result.metrics
        == {
            "accuracy": pytest.approx(
                np.mean(
                    [
                        len(r["prediction"]["boxes"]) == len(r["ground_truth"]["boxes"]) > 0
                        for r in records
                    ]
                )
            )
        }
    )
    assert (summary["family"], summary["num_examples"]) == ("qwen2_5_vl", 6)
    assert result.table in capsys.readouterr().out
    assert result.table.splitlines()[0] == "| model | split | Acc |"
    with Image.open(result.gallery_path) as gallery:
        assert gallery.width > 400 and gallery.height > 400

    # The same parameters restored from an orbax checkpoint give the same completions.
    orbax_dir = tmp_path / "orbax"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((orbax_dir / "3" / "params").absolute(), nnx.state(model, nnx.Param))
    again = runner.evaluate(
        make_config(checkpoint=str(orbax_dir), model=str(hf_dir), **{"eval.name": "orbax"}),
        tmp_path,
    )
    assert again.output_dir.name == "orbax"
    completions = [r["completion"] for r in runner.read_predictions(again.predictions_path)]
    assert completions == [r["completion"] for r in records]


def test_orbax_restore_picks_the_step_and_reads_pure_dicts(checkpoint, tmp_path):
    model, _ = checkpoint
    state = nnx.state(model, nnx.Param)
    shifted = jax.tree.map(lambda x: x + 1, state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "7" / "params").absolute(), state)
    # Step 12 as perception_rl.rl.checkpoint writes it: a manager item of pure-dict params.
    manager = ocp.CheckpointManager(tmp_path.absolute(), item_names=("params",))
    pure = nnx.to_pure_dict(shifted)
    manager.save(12, args=ocp.args.Composite(params=ocp.args.StandardSave(pure)))
    manager.wait_until_finished()
    manager.close()
    assert policy_lib.orbax_params_dir(tmp_path) == tmp_path / "12" / "params"
    assert policy_lib.orbax_params_dir(tmp_path, 7) == tmp_path / "7" / "params"
    assert policy_lib.orbax_params_dir(tmp_path / "7") == tmp_path / "7" / "params"
    with pytest.raises(CheckpointError, match="eval.step=8: .* steps: \\[7, 12\\]"):
        policy_lib.orbax_params_dir(tmp_path, 8)
    for step, expected in ((7, state), (12, shifted)):
        params_dir = tmp_path / str(step) / "params"
        got = policy_lib.restore_params(params_dir, model.config, np.float32)
        jax.tree.map(np.testing.assert_array_equal, got, nnx.to_pure_dict(expected))


def test_preset_architecture_takes_its_tokenizers_ids():
    model_config = policy_lib.preset_architecture("qwen2p5_vl_tiny", tiny_tokenizer_path())
    processor = policy_lib.make_processor(make_config(), tiny_tokenizer_path(), model_config)
    assert model_config.image_token_id == TINY_TOKEN_IDS["image_token_id"]
    assert model_config.eos_token_id == TINY_TOKEN_IDS["eos_token_id"]
    assert processor.model_type == "qwen2_5_vl"


class OracleGenerate:
    """Stands in for the sampler: emits each example's SFT answer, then <|im_end|>."""

    def __init__(self, task, family, processor, examples):
        self.tokenizer, self.pad = processor.tokenizer, processor.pad_token_id
        self.answers = []
        for example in examples:
            geometry = ImageGeometry.for_image(
                *example["image"].shape[:2], processor.image_processor
            )
            text = task.answer(example, geometry, family) + "<|im_end|>"
            self.answers.append(self.tokenizer.encode(text, add_special_tokens=False))
        self.next = 0

    def __call__(
        self, model, batch, *, max_new_tokens, key, temperature, eos_ids, pad_id, **options
    ):
        assert temperature == 0 and TINY_TOKEN_IDS["eos_token_id"] in eos_ids
        self.options = options  # e.g. repetition_penalty
        rows = len(batch["input_ids"])
        answers = self.answers[self.next : self.next + rows]
        answers += answers[-1:] * (rows - len(answers))  # the runner's padding rows
        self.next += rows
        lengths = np.array([len(a) for a in answers], np.int32)
        tokens = np.full((rows, lengths.max()), self.pad, np.int32)
        for row, answer in enumerate(answers):
            tokens[row, : len(answer)] = answer
        return SampleResult(
            tokens, lengths, np.zeros(tokens.shape, np.float32), np.arange(rows, dtype=np.int32)
        )


# A metric that is exactly perfect for exact answers (CrowdDet's AP50 is not, and 0–1000
# rounding keeps small boxes under IoU 0.95).
PERFECT = {
    "grounding": ("acc@0.5", 1.0),
    "counting": ("accuracy", 1.0),
    "detection": ("F1", 1.0),
    "ocr": ("edit_distance", 0.0),
    "crowd": ("JI", 1.0),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_oracle_completions_score_perfectly(name, family, tmp_path, monkeypatch):
    config = make_config(task=name, **{"eval.num_examples": 5, "eval.batch_size": 3})
    task = sources.task_from_config(config)
    processor = policy_lib.make_processor(config, tiny_tokenizer_path(), tiny(family))
    examples = [synthetic.generate_example(name, i, split="val") for i in range(5)]
    monkeypatch.setattr(
        "perception_rl.sampling.generate", OracleGenerate(task, family, processor, examples)
    )
    model = types.SimpleNamespace(config=tiny(family, **TINY_TOKEN_IDS))
    result = runner.evaluate(config, tmp_path, load_policy=lambda _: (model, processor))
    records = runner.read_predictions(result.predictions_path)
    high = {"dip": 2.0}.get(task.reward) or rewards.value_range(
        task.reward, **task.reward_options(family)
    )[1]
    np.testing.assert_allclose([r["reward"] for r in records], high, atol=1e-5)
    key, perfect = PERFECT[name]
    assert result.metrics[key] == pytest.approx(perfect)

    # Re-scoring the written predictions gives the same numbers without a model.
    rescored = runner.evaluate(
        make_config(
            task=name,
            **{
                "eval.num_examples": 5,
                "eval.predictions_file": str(result.predictions_path),
                "eval.name": "rescored",
            },
        ),
        tmp_path,
    )
    assert json.dumps(rescored.metrics) == json.dumps(result.metrics)


def test_predictions_for_unknown_or_missing_images_fail_naming_the_record(tmp_path):
    lines = [json.dumps({"image_id": i, "prediction": {"boxes": [], "count": 0}}) for i in range(3)]
    path = tmp_path / "predictions.jsonl"

    def rescore(text):
        path.write_text(text)
        return runner.evaluate(
            make_config(**{"eval.num_examples": 3, "eval.predictions_file": str(path)}), tmp_path
        )

    assert rescore("\n".join(lines)).metrics == {"accuracy": 0.0}
    unknown = lines[:2] + [json.dumps({"image_id": 99, "prediction": {"boxes": []}})]
    with pytest.raises(RecordError, match="record 3 .*image_id 99 is not in the split"):
        rescore("\n".join(unknown))
    with pytest.raises(RecordError, match="line 2: not JSON"):
        rescore("\n".join([lines[0], "{oops", lines[2]]))
    with pytest.raises(RecordError, match="second prediction for image_id 1"):
        rescore("\n".join(lines + lines[1:2]))
    with pytest.raises(RecordError, match="No prediction for image_id 2"):
        rescore("\n".join(lines[:2]))
    with pytest.raises(RecordError, match="line 1: 'prediction' must be an object"):
        rescore(json.dumps({"image_id": 0, "boxes": []}))


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ({"image_id": 1, "prediction": {"boxes": "xxx"}}, "field 'boxes' must be a list"),
        ({"image_id": 1, "prediction": {}}, "lacks ['boxes']"),
        ({"image_id": 1, "prediction": {"boxes": [[1, 2, 3]]}}, "bad element [1, 2, 3]"),
        ({"image_id": 1, "prediction": {"boxes": [[1, 2, 3, True]]}}, "4 finite numbers"),
        ({"image_id": "1", "prediction": {"boxes": []}}, "'image_id' must be an integer"),
        ({"image_id": 1, "prediction": {"boxes": [], "count": -1}}, "non-negative integer"),
    ],
    ids=["string-boxes", "empty", "short-box", "bool", "string-id", "count"],
)
def test_predictions_of_the_wrong_type_fail_naming_file_line_and_field(tmp_path, bad_line, message):
    good = [json.dumps({"image_id": i, "prediction": {"boxes": []}}) for i in (0, 2)]
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join([good[0], json.dumps(bad_line), good[1]]))
    config = make_config(**{"eval.num_examples": 3, "eval.predictions_file": str(path)})
    with pytest.raises(RecordError) as error:
        runner.evaluate(config, tmp_path)
    assert f"{path} line 2: " in str(error.value) and message in str(error.value)


def test_binary_predictions_file_fails_naming_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"image_id": 0, "prediction": {"boxes": []}}\n\x89PNG\r\n\x1a\n\xff\xfe')
    config = make_config(**{"eval.num_examples": 3, "eval.predictions_file": str(path)})
    with pytest.raises(RecordError, match=f"{path} line 2: not UTF-8"):
        runner.evaluate(config, tmp_path)


def test_ground_truth_jsonl_source_and_malformed_records(tmp_path):
    Image.new("RGB", (60, 40), "white").save(tmp_path / "a.png")
    good = {
        "image_id": 1,
        "image": "a.png",
        "query": "red circle",
        "boxes": [[1, 2, 30, 20]],
        "labels": ["red circle"],
    }
    (tmp_path / "val.jsonl").write_text(json.dumps(good) + "\n")
    source = runner.make_source(
        make_config(**{"data.source": "jsonl", "data.source_dir": str(tmp_path)}),
        get_task("detection", label_names=synthetic.LABELS),
        "val",
    )
    example = source[0]
    assert example["image"].shape == (40, 60, 3) and example["labels"].tolist() == [
        synthetic.LABELS.index("red circle")
    ]
    np.testing.assert_array_equal(example["points"], [[15.5, 11]])

    def opens(*records):
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
        return sources.JsonlSource(path, get_task("detection", label_names=synthetic.LABELS))

    where = f"{tmp_path / 'bad.jsonl'} line 2"
    for bad, problem in [
        ({**good, "boxes": [[1, 2, 70, 20]]}, "outside the 60x40 image"),
        ({**good, "image": "missing.png"}, "No such file"),
        ({**good, "image_id": "7"}, "not an integer"),
        ({**good, "labels": ["unicorn"]}, "label 'unicorn' is not one"),
        ({**good, "labels": [0, 1]}, "2 labels for 1 boxes"),
        ("[1, 2", "not JSON"),
    ]:
        with pytest.raises(DataError) as error:
            opens(good, bad)
        assert where in str(error.value) and problem in str(error.value)


def test_truncated_image_names_its_file_and_keeps_the_decoded_predictions(
    checkpoint, tmp_path, monkeypatch
):
    _, hf_dir = checkpoint
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(6):
        Image.new("RGB", (56, 56), (40 * i, 90, 200)).save(data / f"{i}.png")
        lines.append(
            json.dumps(
                {"image_id": i, "image": f"{i}.png", "query": "dots", "boxes": [[4, 4, 20, 20]]}
            )
        )
    (data / "val.jsonl").write_text("\n".join(lines))
    whole = (data / "5.png").read_bytes()
    (data / "5.png").write_bytes(whole[: len(whole) // 2])  # the header survives
    config = make_config(
        checkpoint=str(hf_dir), **{"data.source": "jsonl", "data.source_dir": str(data)}
    )
    decoded = []
    decode = runner._decode_batch
    monkeypatch.setattr(
        runner, "_decode_batch", lambda *a, **k: decoded.append(a[3]) or decode(*a, **k)
    )
    with pytest.raises(DataError, match=f"{data / '5.png'} \\(image of .*val.jsonl line 6"):
        runner.evaluate(config, tmp_path)
    out = tmp_path / "eval" / "val"
    kept = (out / "predictions.partial.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in kept] == [0, 1, 2, 3]

    (data / "5.png").write_bytes(whole)
    decoded.clear()
    result = runner.evaluate(config, tmp_path)
    assert decoded == [[4, 5]]  # the first batch came from the partial file
    assert [r["image_id"] for r in runner.read_predictions(result.predictions_path)] == list(
        range(6)
    )
    assert not (out / "predictions.partial.jsonl").exists()
