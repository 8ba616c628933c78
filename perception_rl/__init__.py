"""perception_rl: rule-based GRPO for Qwen-VL perception, in JAX/Flax NNX."""

import os

# transformers serves only tokenizers and configs here; without torch it would advise on every
# import that "PyTorch was not found", which reads like an error. Users can still opt back in.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
