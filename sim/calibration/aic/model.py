"""A model's shape from its Hugging Face ``config.json``, and its parameter count.

Supported architectures are the dense and MoE decoders whose layer is: RMSNorm, QKV projection,
RoPE, attention, O projection, RMSNorm, gated MLP (SiLU) or a top-k routed MoE of gated
experts. Parameter counts follow the Hugging Face module layout of those architectures (QKV bias
for Qwen2, per-head q/k RMSNorm for Qwen3, a router without bias for the MoE models).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import InputError

DENSE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
MOE = ("MixtralForCausalLM", "Qwen3MoeForCausalLM")
SUPPORTED = DENSE + MOE

#: Configs not in aiconfigurator-core's model_configs nor in $SIMLB_SHARED: the published Hugging
#: Face config.json values (meta-llama/Llama-2-70b-hf), the fields this derivation reads.
BUILTIN: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-70b-hf": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
        "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False,
    },
}


@dataclass(frozen=True)
class ModelSpec:
    """The shape the cost terms need. ``experts`` is 0 for a dense model."""

    name: str
    arch: str
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    max_position: int
    tied: bool
    experts: int = 0
    topk: int = 0
    qkv_bias: bool = False
    qk_norm: bool = False

    @property
    def params(self) -> int:
        """Parameters, embedding and LM head included (the LM head once if tied)."""
        h, q, kv = self.hidden, self.q_heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        attn += 2 * self.head_dim if self.qk_norm else 0
        mlp = 3 * h * self.inter
        if self.experts:
            mlp = self.experts * mlp + h * self.experts  # experts + router
        layer = attn + mlp + 2 * h  # + two RMSNorm weights
        return self.layers * layer + h + self.vocab * h * (1 if self.tied else 2)

    @property
    def active_params(self) -> int:
        """Parameters a token touches (MoE: top-k experts only); the FLOPs basis."""
        if not self.experts:
            return self.params
        return self.params - self.layers * (self.experts - self.topk) * 3 * self.hidden * self.inter


def config_dirs() -> list[Path]:
    """Where model names are looked up: aiconfigurator-core's ``model_configs``, then the
    ``model_configs`` folder of the shared data (``$SIMLB_SHARED`` or ``<repo>/../shared``)."""
    from sim.calibration.aic.tables import package_root

    shared = Path(os.environ.get("SIMLB_SHARED", Path(__file__).resolve().parents[4] / "shared"))
    return [package_root() / "model_configs", shared / "model_configs"]


def load_config(ref: str) -> tuple[dict[str, Any], str]:
    """The decoded config of a model name (``Org/Name``) or a path, and where it came from.

    A name ``Org/Name`` is looked up as ``Org--Name_config.json`` in aiconfigurator-core, then as
    ``name.json`` (lower case, without the org) in the shared folder, then in ``BUILTIN``.

    Raises:
        InputError: nothing found (listing what is), or the file is not valid JSON.
    """
    path = Path(ref)
    if ref.endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError("no such config file", source=ref)
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno}", source=ref) from None
    dirs = config_dirs()
    short = ref.split("/")[-1].lower()
    for cand in (dirs[0] / f"{ref.replace('/', '--')}_config.json", dirs[1] / f"{short}.json"):
        if cand.is_file():
            return json.loads(cand.read_text()), str(cand)
    if ref in BUILTIN:
        return dict(BUILTIN[ref]), f"built-in {ref} (published HF config values)"
    known = sorted(p.name.removesuffix("_config.json").replace("--", "/")
                   for p in dirs[0].glob("*_config.json"))
    known += sorted(p.stem for p in dirs[1].glob("*.json")) + sorted(BUILTIN)
    raise InputError(f"unknown model {ref!r}; give a config.json path or one of: "
                     f"{', '.join(known)}")


def model_spec(config: dict[str, Any], name: str, source: str = "config") -> ModelSpec:
    """Validate a config and return its shape.

    Raises:
        InputError: an unsupported architecture (listing the supported ones) or a missing field
            (naming it).
    """
    cfg = config.get("text_config", config) if "text_config" in config else config
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise InputError(f"architecture {arch!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED)}", source=source)

    def need(key: str) -> Any:
        if key not in cfg or cfg[key] is None:
            raise InputError(f"missing field {key!r} (needed for the {arch} shape)",
                             source=source)
        return cfg[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    experts, topk = 0, 0
    if arch == "MixtralForCausalLM":
        experts, topk, inter = (int(need("num_local_experts")), int(need("num_experts_per_tok")),
                                int(need("intermediate_size")))
    elif arch == "Qwen3MoeForCausalLM":
        experts, topk, inter = (int(need("num_experts")), int(need("num_experts_per_tok")),
                                int(need("moe_intermediate_size")))
        if cfg.get("mlp_only_layers") or int(cfg.get("decoder_sparse_step", 1)) != 1:
            raise InputError("dense layers inside a Qwen3-MoE (mlp_only_layers, "
                             "decoder_sparse_step) are not supported", source=source)
    else:
        inter = int(need("intermediate_size"))
    return ModelSpec(
        name=name, arch=arch, hidden=hidden, layers=int(need("num_hidden_layers")),
        q_heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads), inter=inter,
        vocab=int(need("vocab_size")), max_position=int(need("max_position_embeddings")),
        tied=bool(cfg.get("tie_word_embeddings", False)), experts=experts, topk=topk,
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
        qk_norm=arch.startswith("Qwen3"))
