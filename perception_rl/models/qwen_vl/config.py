"""Qwen2-VL / Qwen2.5-VL configuration: dataclasses, HF `config.json` parsing, named presets.

One config type describes both families; `family` selects the vision block flavour
("qwen2_vl": LayerNorm + QuickGELU MLP, full attention everywhere; "qwen2_5_vl": RMSNorm +
SwiGLU MLP with window attention except in `fullatt_block_indexes`).

Longer than ~400 lines on purpose: both families' dataclasses, HF `config.json` parsing with
its checks, and the presets must agree field by field, so they sit together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from perception_rl import errors

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


class ConfigError(errors.ConfigError):
    """A checkpoint config that this port cannot represent."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower. `width` is the ViT width (HF: embed_dim for 2-VL, hidden_size for 2.5-VL)."""

    depth: int
    width: int
    num_heads: int
    mlp_dim: int  # 2-VL: mlp_ratio * width; 2.5-VL: intermediate_size.
    out_dim: int  # merger output, equals the text hidden size.
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    rope_theta: float = 10000.0
    window_size: int = 0  # pixels; 0 means full attention in every block (2-VL).
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: float = 2.0

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def window_tokens(self) -> int:
        """Window side in merged tokens (0: no window attention)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def windowed_blocks(self) -> tuple[bool, ...]:
        """Per block: whether it attends within windows (2.5-VL's blocks outside
        `fullatt_block_indexes`) rather than over the whole image."""
        return tuple(
            bool(self.window_tokens) and i not in self.fullatt_block_indexes
            for i in range(self.depth)
        )


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder with M-RoPE."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    """Whole-model config. Token ids are those of the checkpoint's tokenizer."""

    family: str
    vision: VisionConfig
    text: TextConfig
    tie_word_embeddings: bool
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645
    pad_token_id: int | None = None

    def __post_init__(self):
        _validate(self)

    def replace(self, **kw) -> QwenVLConfig:
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF interop
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> QwenVLConfig:
        """Parses an HF config dict (4.x flat or 5.x nested layout)."""
        family = d.get("model_type")
        if family not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type={family!r} is not supported; expected one of {FAMILIES}."
            )
        t = dict(d.get("text_config") or {})
        for k, v in d.items():  # 4.x flat layout: text fields at the top level.
            if k not in ("text_config", "vision_config") and k not in t:
                t[k] = v
        v = d.get("vision_config") or {}
        rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or {})
        if t.get("use_sliding_window"):
            raise ConfigError(
                f"{source}: use_sliding_window=true is not supported (no released "
                "Qwen-VL checkpoint uses it)."
            )
        text = TextConfig(
            vocab_size=t["vocab_size"],
            hidden_size=t["hidden_size"],
            intermediate_size=t["intermediate_size"],
            num_layers=t["num_hidden_layers"],
            num_heads=t["num_attention_heads"],
            num_kv_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1e6))),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
            max_position_embeddings=t.get("max_position_embeddings", 32768),
        )
        if family == "qwen2_vl":
            width = v.get("embed_dim", 1280)
            vision = VisionConfig(
                depth=v.get("depth", 32),
                width=width,
                num_heads=v.get("num_heads", 16),
                mlp_dim=int(width * v.get("mlp_ratio", 4)),
                out_dim=v.get("hidden_size", text.hidden_size),
                **_common_vision(v),
            )
        else:
            vision = VisionConfig(
                depth=v.get("depth", 32),
                width=v.get("hidden_size", 1280),
                num_heads=v.get("num_heads", 16),
                mlp_dim=v.get("intermediate_size", 3420),
                out_dim=v.get("out_hidden_size", text.hidden_size),
                window_size=v.get("window_size", 112),
                fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
                tokens_per_second=v.get("tokens_per_second", 2),
                **_common_vision(v),
            )
        tie = d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        return cls(
            family=family,
            vision=vision,
            text=text,
            tie_word_embeddings=bool(tie),
            image_token_id=d.get("image_token_id", t.get("image_token_id", 151655)),
            video_token_id=d.get("video_token_id", t.get("video_token_id", 151656)),
            vision_start_token_id=d.get("vision_start_token_id", 151652),
            vision_end_token_id=d.get("vision_end_token_id", 151653),
            bos_token_id=t.get("bos_token_id"),
            eos_token_id=t.get("eos_token_id"),
            pad_token_id=t.get("pad_token_id"),
        )

    @classmethod
    def from_pretrained(cls, path: str) -> QwenVLConfig:
        file = os.path.join(path, "config.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: no config.json in the checkpoint directory.")
        with open(file) as f:
            return cls.from_hf_dict(json.load(f), source=file)

    def to_hf_dict(self) -> dict[str, Any]:
        """The nested (transformers 5.x) config.json that `transformers` loads back."""
        t, v = self.text, self.vision
        text = dict(
            model_type=f"{self.family}_text",
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            rms_norm_eps=t.rms_norm_eps,
            max_position_embeddings=t.max_position_embeddings,
            hidden_act="silu",
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters=dict(
                rope_type="default", rope_theta=t.rope_theta, mrope_section=list(t.mrope_section)
            ),
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        vision = dict(
            model_type=f"{self.family}_vision" if self.family == "qwen2_5_vl" else "qwen2_vl",
            depth=v.depth,
            num_heads=v.num_heads,
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            spatial_merge_size=v.spatial_merge_size,
            in_channels=v.in_channels,
            rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta),
        )
        if self.family == "qwen2_vl":
            vision.update(
                embed_dim=v.width,
                hidden_size=v.out_dim,
                mlp_ratio=_int_if_integral(v.mlp_dim / v.width),
                hidden_act="quick_gelu",
            )
        else:
            vision.update(
                hidden_size=v.width,
                intermediate_size=v.mlp_dim,
                out_hidden_size=v.out_dim,
                hidden_act="silu",
                window_size=v.window_size,
                fullatt_block_indexes=list(v.fullatt_block_indexes),
                tokens_per_second=_int_if_integral(v.tokens_per_second),
            )
        arch = (
            "Qwen2VLForConditionalGeneration"
            if self.family == "qwen2_vl"
            else "Qwen2_5_VLForConditionalGeneration"
        )
        return dict(
            architectures=[arch],
            model_type=self.family,
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=self.tie_word_embeddings,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            vision_start_token_id=self.vision_start_token_id,
            vision_end_token_id=self.vision_end_token_id,
        )


def _int_if_integral(x: float) -> int | float:
    """transformers' strict config dataclasses reject 2.0 where the hub writes 2."""
    return int(x) if float(x).is_integer() else x


def _common_vision(v: dict[str, Any]) -> dict[str, Any]:
    rope = v.get("rope_parameters") or {}
    return dict(
        patch_size=v.get("patch_size", 14),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        in_channels=v.get("in_channels", v.get("in_chans", 3)),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
    )


def _validate(c: QwenVLConfig) -> None:
    """Checks the constraints HF enforces (qwen_vl_port.md §6.2), with readable messages."""
    t, v = c.text, c.vision
    if c.family not in FAMILIES:
        raise ConfigError(f"family={c.family!r}; expected one of {FAMILIES}.")
    if t.hidden_size % t.num_heads or t.num_heads % t.num_kv_heads:
        raise ConfigError(
            f"text: hidden_size={t.hidden_size}, num_heads={t.num_heads}, "
            f"num_kv_heads={t.num_kv_heads} must divide evenly."
        )
    if sum(t.mrope_section) * 2 != t.head_dim:
        raise ConfigError(
            f"text: sum(mrope_section)={sum(t.mrope_section)} must equal "
            f"head_dim/2={t.head_dim // 2}."
        )
    if v.width % v.num_heads or v.head_dim % 4:
        raise ConfigError(
            f"vision: width={v.width}/num_heads={v.num_heads} must give a head dim "
            "divisible by 4 (2-D rotary)."
        )
    if v.out_dim != t.hidden_size:
        raise ConfigError(
            f"vision merger output {v.out_dim} must equal text hidden_size {t.hidden_size}."
        )
    if c.family == "qwen2_5_vl" and v.window_tokens < 1:
        raise ConfigError(
            f"vision: window_size={v.window_size} px must be >= "
            f"spatial_merge_size*patch_size={v.spatial_merge_size * v.patch_size}."
        )


# ------------------------------------------------------------------------------------ presets
def _qwen2_vl(hidden, layers, heads, kv, inter, vocab, tie) -> QwenVLConfig:
    return QwenVLConfig(
        family="qwen2_vl",
        tie_word_embeddings=tie,
        vision=VisionConfig(depth=32, width=1280, num_heads=16, mlp_dim=5120, out_dim=hidden),
        text=TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
        ),
    )


def _qwen2p5_vl(hidden, layers, heads, kv, inter, vocab, tie) -> QwenVLConfig:
    return QwenVLConfig(
        family="qwen2_5_vl",
        tie_word_embeddings=tie,
        vision=VisionConfig(
            depth=32,
            width=1280,
            num_heads=16,
            mlp_dim=3420,
            out_dim=hidden,
            window_size=112,
            fullatt_block_indexes=(7, 15, 23, 31),
        ),
        text=TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            max_position_embeddings=128000,
        ),
    )


# Special-token ids of the shipped tiny tokenizer (perception_rl/assets/tiny_tokenizer).
TINY_TOKENIZER_IDS = dict(
    image_token_id=10,
    video_token_id=11,
    vision_start_token_id=12,
    vision_end_token_id=13,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
)


def tiny(
    family: str = "qwen2_5_vl",
    vocab_size: int = 1024,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_width: int = 32,
    vision_depth: int = 2,
    rope_theta: float = 1e6,
    **token_ids,
) -> QwenVLConfig:
    """A small model with every code path active, matching the shipped tiny tokenizer.

    The default (a few hundred K params) is for tests; the synthetic main job uses a wider one.
    2.5-VL gets one windowed and one full-attention block (window 56 px = 2×2 merged tokens).
    """
    heads = max(4, hidden_size // 32)
    head_dim = hidden_size // heads
    section = (head_dim // 2 - 2 * (3 * head_dim // 16), 3 * head_dim // 16, 3 * head_dim // 16)
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=heads // 2,
        mrope_section=section,
        rope_theta=rope_theta,
        max_position_embeddings=4096,
    )
    vheads = 4
    if family == "qwen2_vl":
        vision = VisionConfig(
            depth=vision_depth,
            width=vision_width,
            num_heads=vheads,
            mlp_dim=4 * vision_width,
            out_dim=hidden_size,
        )
    else:
        vision = VisionConfig(
            depth=vision_depth,
            width=vision_width,
            num_heads=vheads,
            mlp_dim=3 * vision_width // 2,
            out_dim=hidden_size,
            window_size=56,
            fullatt_block_indexes=(vision_depth - 1,),
        )
    ids = {**TINY_TOKENIZER_IDS, **token_ids}
    return QwenVLConfig(family=family, vision=vision, text=text, tie_word_embeddings=True, **ids)


PRESETS = {
    "qwen2_vl_2b": lambda: _qwen2_vl(1536, 28, 12, 2, 8960, 151936, tie=True),
    "qwen2_vl_7b": lambda: _qwen2_vl(3584, 28, 28, 4, 18944, 152064, tie=False),
    "qwen2p5_vl_3b": lambda: _qwen2p5_vl(2048, 36, 16, 2, 11008, 151936, tie=True),
    "qwen2p5_vl_7b": lambda: _qwen2p5_vl(3584, 28, 28, 4, 18944, 152064, tie=False),
    "qwen2_vl_tiny": lambda: tiny("qwen2_vl"),
    "qwen2p5_vl_tiny": lambda: tiny("qwen2_5_vl"),
    # The main job (configs/synthetic.py): wide enough to learn the synthetic tasks on CPU.
    "qwen2p5_vl_tiny_synthetic": lambda: tiny(
        "qwen2_5_vl", hidden_size=128, num_layers=3, vision_width=64
    ),
    # configs/synthetic.py:grounding: the same model with rope_theta 2. At 1e6 the M-RoPE
    # height and width sections of a 32-wide head get 0.03-0.0006 and 2e-4-1e-6 rad per
    # position, so 4x4 merged tokens are almost indistinguishable by position and the policy
    # cannot tell where the referent is (SFT centre error uncorrelated with the target).
    "qwen2p5_vl_tiny_synthetic_grounding": lambda: tiny(
        "qwen2_5_vl", hidden_size=128, num_layers=3, vision_width=64, rope_theta=2.0
    ),
}


def preset(name: str) -> QwenVLConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}.")
    return PRESETS[name]()
