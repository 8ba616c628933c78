"""perception_rl: GRPO post-training of Qwen-VL policies in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="perception_rl",
    version="0.1.0",
    description="Rule-based RL (GRPO) for visual perception with Qwen2-VL / Qwen2.5-VL in JAX.",
    python_requires=">=3.11",
    packages=find_packages(include=["perception_rl", "perception_rl.*"]),
    package_data={"perception_rl": ["assets/**/*"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.13",
        "pillow>=10.0",
        "safetensors>=0.4",
        # Used without torch: tokenizers, chat templates and config parsing only.
        "transformers>=5.0",
        # transformers renders chat templates with jinja2 but does not depend on it.
        "jinja2>=3.1",
        "rapidfuzz>=3.9",
        "faster-coco-eval>=1.6",
        "grain>=0.2.18",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers>=5.0",
            "pycocotools>=2.0.8",
            "nltk>=3.9",
            # The TFDS builder tests build and read array_record without TensorFlow.
            "tensorflow-datasets>=4.9.10",
            "array-record>=0.8",
            "importlib_resources>=6",
            "ijson>=3.2",
            "pyarrow>=14",
            # tests/test_plan.py compiles for TPU topologies on CPU (see the "tpu" extra).
            "libtpu==0.0.42.1",
        ],
        # `python -m perception_rl.plan --topology=v5e:2x4` on a CPU machine: libtpu compiles
        # for TPU topologies without TPUs (0.0.42.1 is the build jax 0.10.2 was verified with).
        "tpu": ["libtpu==0.0.42.1"],
        # Building / reading TFDS datasets (no TensorFlow needed); ijson streams COCO-style
        # JSON, pyarrow reads PixMo-Count / PR1 parquet.
        "data": [
            "tensorflow-datasets>=4.9.10",
            "array-record>=0.8",
            "importlib_resources>=6",
            "ijson>=3.2",
            "pyarrow>=14",
        ],
        # METEOR and Chinese segmentation for PageOCR evaluation.
        "ocr": ["nltk>=3.9", "jieba>=0.42"],
        # Bit-exact COCO numbers: coco_metrics(..., backend="pycocotools").
        "coco": ["pycocotools>=2.0.8"],
        # The peer of benchmarks/grpo_step.py.
        "bench": ["trl>=1.16", "torch==2.13.0"],
    },
)
