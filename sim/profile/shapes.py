"""Model shapes the profiler builds: built-in presets and Hugging Face-style ``config.json``.

Only the shape matters for timing (weights are random), so a
shape is the handful of numbers of a Llama-style decoder. The presets' numbers are those of the
models' published Hugging Face ``config.json`` files; their parameter counts reproduce the
published ones (8.03B, 6.74B, 7.25B, 7.62B; profiling.md §3.2).

Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.errors import InputError


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-style decoder (RMSNorm, RoPE, GQA attention, gated SiLU MLP).

    Attributes:
        name: short model name, e.g. ``llama-3-8b``.
        hidden_size: model width h.
        num_layers: decoder layers L.
        num_heads: query heads H_q.
        num_kv_heads: key/value heads H_kv (divides H_q).
        head_dim: D.
        intermediate_size: MLP width I (the gate and up projections are h x I each).
        vocab_size: V.
        rope_theta: RoPE base.
        qkv_bias: whether the QKV projection has a bias (Qwen2).
        tie_embeddings: LM head shares the embedding matrix.
        max_position: context limit in tokens.
        rms_eps: RMSNorm epsilon.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position: int = 4096
    rms_eps: float = 1e-5

    @property
    def qkv_width(self) -> int:
        """Output width of the fused QKV projection: ``(H_q + 2 H_kv) D``."""
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (QKV (+bias), O, gate-up, down, two norms)."""
        h, d = self.hidden_size, self.head_dim
        qkv = h * self.qkv_width + (self.qkv_width if self.qkv_bias else 0)
        return qkv + self.num_heads * d * h + 3 * h * self.intermediate_size + 2 * h

    @property
    def params(self) -> int:
        """All parameters: layers, embedding, final norm and (untied) LM head."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else embed
        return self.num_layers * self.layer_params + embed + head + self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of one token over all layers: ``2 L H_kv D dtype_bytes`` (profiling.md §3.2)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def as_dict(self) -> dict[str, Any]:
        """The shape as a JSON-ready dict, with the parameter count."""
        return {**asdict(self), "params": self.params}


BUILTIN: dict[str, LlamaShape] = {
    # meta-llama/Meta-Llama-3-8B config.json
    "llama-3-8b": LlamaShape("llama-3-8b", 4096, 32, 32, 8, 128, 14336, 128256,
                             rope_theta=500000.0, max_position=8192),
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": LlamaShape("llama-2-7b", 4096, 32, 32, 32, 128, 11008, 32000,
                             rope_theta=10000.0, max_position=4096),
    # mistralai/Mistral-7B-v0.3 config.json
    "mistral-7b": LlamaShape("mistral-7b", 4096, 32, 32, 8, 128, 14336, 32768,
                             rope_theta=1e6, max_position=32768),
    # Qwen/Qwen2.5-7B-Instruct config.json (32k without YaRN), QKV bias, RMSNorm eps 1e-6
    "qwen2.5-7b": LlamaShape("qwen2.5-7b", 3584, 28, 28, 4, 128, 18944, 152064,
                             rope_theta=1e6, qkv_bias=True, max_position=32768, rms_eps=1e-6),
    # the CPU/CI test shape of profiling.md §5.1 (5.1M parameters)
    "tiny": LlamaShape("tiny", 256, 4, 8, 2, 32, 768, 4096, max_position=4096),
}
ALIASES = {"llama3-8b": "llama-3-8b", "llama2-7b": "llama-2-7b", "mistral-7b-v0.3": "mistral-7b",
           "qwen2.5-7b-instruct": "qwen2.5-7b", "qwen2-7b": "qwen2.5-7b"}

#: Hugging Face config keys that must be present (the others have defaults).
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "vocab_size")


def _int(cfg: dict[str, Any], key: str, source: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"expected a positive integer, got {value!r}", source=source, field=key)
    return value


def shape_from_config(cfg: dict[str, Any], name: str, source: str = "<config>") -> LlamaShape:
    """Build a shape from a Hugging Face ``config.json`` mapping.

    Keys: ``hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    vocab_size`` (required); ``num_key_value_heads`` (default: the query heads), ``head_dim``
    (default ``hidden_size / num_attention_heads``), ``rope_theta`` (10000),
    ``attention_bias`` (or ``model_type`` ``qwen2``: bias on), ``tie_word_embeddings`` (False),
    ``max_position_embeddings`` (4096), ``rms_norm_eps`` (1e-5).

    Raises:
        InputError: a required key is missing or a value is invalid; names the file and key.
    """
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object", source=source)
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise InputError("missing required field", source=source, field=key)
    h, heads = _int(cfg, "hidden_size", source), _int(cfg, "num_attention_heads", source)
    kv_heads = _int(cfg, "num_key_value_heads", source) if cfg.get(
        "num_key_value_heads") is not None else heads
    head_dim = _int(cfg, "head_dim", source) if cfg.get("head_dim") is not None else h // heads
    if heads % kv_heads:
        raise InputError(f"num_key_value_heads={kv_heads} does not divide "
                         f"num_attention_heads={heads}", source=source,
                         field="num_key_value_heads")
    bias = bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2"))
    return LlamaShape(
        name=name, hidden_size=h, num_layers=_int(cfg, "num_hidden_layers", source),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        intermediate_size=_int(cfg, "intermediate_size", source),
        vocab_size=_int(cfg, "vocab_size", source),
        rope_theta=float(cfg.get("rope_theta", 10000.0)), qkv_bias=bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=int(cfg.get("max_position_embeddings", 4096)),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-5)))


def _config_name(path: Path, cfg: dict[str, Any]) -> str:
    """A model name for a config file: ``_name_or_path``'s last part, else the folder's name."""
    ref = cfg.get("_name_or_path") if isinstance(cfg, dict) else None
    base = str(ref).rstrip("/").rsplit("/", 1)[-1] if ref else (
        path.parent.name if path.name == "config.json" else path.stem)
    return base.lower() or "model"


def resolve_shape(ref: str) -> LlamaShape:
    """A built-in shape by name (case-insensitive, aliases allowed) or a config.json path.

    Raises:
        InputError: unknown name, unreadable or invalid config file.
    """
    key = ref.strip().lower()
    key = ALIASES.get(key, key)
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(ref).expanduser()
    if not path.suffix and not path.exists():
        raise InputError(f"unknown model (built-in: {', '.join(sorted(BUILTIN))}; or give the "
                         f"path of a Hugging Face config.json)", source=ref)
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the model config ({exc.strerror}); built-in models: "
                         f"{', '.join(sorted(BUILTIN))}", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno}",
                         source=str(path)) from None
    return shape_from_config(cfg, _config_name(path, cfg), source=str(path))
