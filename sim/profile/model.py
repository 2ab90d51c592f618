"""A functional Llama with random weights, its step inputs, and the float64 correctness gate.

Layout (as Hugging Face ``LlamaForCausalLM``): embedding; per layer RMSNorm, fused QKV GEMM (+ bias
for Qwen2), RoPE (rotate-half, as Hugging Face Llama), attention, O GEMM, RMSNorm, fused
gate-up GEMM, SiLU x up, down GEMM, residual adds; final RMSNorm, LM head, fp32 logits and
argmax (greedy sampling, as vLLM's sampler upcasts logits to fp32). Weights are drawn
``normal(0, 0.02)`` directly on the device (never zeros: METHOD.md saw a bf16 GEMM run 13%
faster on zeros). Attention is PyTorch's ``scaled_dot_product_attention`` with
``enable_gqa=True``: causal for a fresh chunk, ``causal_lower_right`` after a cached prefix
(§5.4), and one query per sequence against a KV view for decode. The new tokens' K and V are
written into the cache first, so the KV-write cost is part of the step.

Imports torch; only the profiler imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right

from sim.errors import ProfileError
from sim.profile.grid import Shape
from sim.profile.shapes import LlamaShape

#: Relative-error limits of the gate by dtype (profiling.md §5.3 expects ~1e-2 for bf16; the
#: layer check measured 9e-3 for 7-8B shapes in bf16 on the CPU, so 3e-2 leaves a margin).
GATE_TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2,
            torch.float16: 5e-3}


@dataclass
class Layer:
    """One decoder layer's weights (``[out, in]``, as ``F.linear`` takes them)."""

    ln1: Tensor
    wqkv: Tensor
    bqkv: Tensor | None
    wo: Tensor
    ln2: Tensor
    wgu: Tensor
    wd: Tensor


@dataclass
class Llama:
    """The model: shape, weights, RoPE tables for positions ``0 .. cos.shape[0]-1``, and the
    prefix-attention call (``attend_prefill``'s ``mode``, chosen by the correctness gate)."""

    shape: LlamaShape
    embed: Tensor
    layers: list[Layer]
    norm: Tensor
    head: Tensor
    cos: Tensor
    sin: Tensor
    prefix_mode: str = "lower_right"

    def weight_bytes(self) -> int:
        """Bytes of all weights (a tied head counted once)."""
        ts = [self.embed, self.norm, *([] if self.head is self.embed else [self.head])]
        for layer in self.layers:
            ts += [t for t in vars(layer).values() if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


def _randn(gen: torch.Generator, *size: int, dtype: torch.dtype, device: str) -> Tensor:
    return torch.empty(size, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)


def rope_tables(shape: LlamaShape, n_positions: int, dtype: torch.dtype,
                device: str) -> tuple[Tensor, Tensor]:
    """cos and sin ``[n_positions, D]`` for rotate-half RoPE, ``theta^(-2i/D)`` frequencies."""
    d = shape.head_dim
    inv = shape.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    ang = torch.arange(n_positions, dtype=torch.float32, device=device)[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def build_model(shape: LlamaShape, device: str, dtype: torch.dtype, seed: int,
                n_positions: int) -> Llama:
    """Allocate the model on ``device`` with random weights (deterministic in ``seed``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    h, i = shape.hidden_size, shape.intermediate_size
    kw = {"dtype": dtype, "device": device}

    def ones() -> Tensor:
        return torch.ones(h, dtype=dtype, device=device)

    layers = [Layer(ones(), _randn(gen, shape.qkv_width, h, **kw),
                    _randn(gen, shape.qkv_width, **kw) if shape.qkv_bias else None,
                    _randn(gen, h, shape.num_heads * shape.head_dim, **kw), ones(),
                    _randn(gen, 2 * i, h, **kw), _randn(gen, h, i, **kw))
              for _ in range(shape.num_layers)]
    embed = _randn(gen, shape.vocab_size, h, **kw)
    head = embed if shape.tie_embeddings else _randn(gen, shape.vocab_size, h, **kw)
    cos, sin = rope_tables(shape, n_positions, dtype, device)
    return Llama(shape, embed, layers, ones(), head, cos, sin)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE of ``x [T, H, D]`` with per-token ``cos, sin [T, D]``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]


def attend_prefill(q: Tensor, k: Tensor, v: Tensor, cache: Tensor | None, prefix: int,
                   mode: str = "lower_right") -> Tensor:
    """One chunk: ``q [P, Hq, D]``, new ``k, v [P, Hkv, D]``; ``cache [2, 1, Hkv, K+P, D]``
    holds the prefix (None: no cache, a fresh sequence). Returns ``[P, Hq*D]``.

    ``mode`` for a prefix: ``lower_right`` passes ``causal_lower_right(P, K+P)`` (documented;
    torch dispatches it to FlashAttention with ``is_causal``); ``flash_causal`` passes
    ``is_causal=True`` directly, which FlashAttention-2 aligns bottom-right when P < K+P (the
    math kernel would align top-left, so this mode is only valid under the flash backend;
    the correctness gate decides).
    """
    p = q.shape[0]
    qh = q.transpose(0, 1).unsqueeze(0)
    if cache is None:
        kh, vh = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
    else:
        cache[0, 0, :, prefix:prefix + p].copy_(k.transpose(0, 1))
        cache[1, 0, :, prefix:prefix + p].copy_(v.transpose(0, 1))
        kh, vh = cache[0], cache[1]
    if prefix and mode == "lower_right":
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal_lower_right(
            p, prefix + p), enable_gqa=True)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(p, -1)


def attend_decode(q: Tensor, k: Tensor, v: Tensor, cache: Tensor, ctx: int) -> Tensor:
    """B decodes: ``q [B, Hq, D]``, new ``k, v [B, Hkv, D]`` written at position ``ctx`` of
    ``cache [2, B, Hkv, ctx+1, D]``; each query attends to all ``ctx + 1`` keys."""
    cache[0, :, :, ctx].copy_(k)
    cache[1, :, :, ctx].copy_(v)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), cache[0], cache[1], enable_gqa=True)
    return out.reshape(q.shape[0], -1)


@dataclass
class StepInputs:
    """Prepared tensors of one step: a chunk of ``P`` after ``K`` and ``B`` decodes at ``C``.

    ``chunk_kv [L, 2, 1, Hkv, K+P, D]`` (None: attention on the fresh chunk only) and
    ``dec_kv [L, 2, B, Hkv, C+1, D]`` are views of the KV pool; ``rows`` are the hidden rows
    the LM head reads (None: no head).
    """

    ids: Tensor
    pos: Tensor
    P: int = 0
    K: int = 0
    B: int = 0
    C: int = 0
    chunk_kv: Tensor | None = None
    dec_kv: Tensor | None = None
    rows: Tensor | None = None


def _attention(m: Llama, q: Tensor, k: Tensor, v: Tensor, inp: StepInputs, layer: int) -> Tensor:
    outs = []
    if inp.P:
        kv = None if inp.chunk_kv is None else inp.chunk_kv[layer]
        outs.append(attend_prefill(q[:inp.P], k[:inp.P], v[:inp.P], kv, inp.K, m.prefix_mode))
    if inp.B:
        assert inp.dec_kv is not None
        outs.append(attend_decode(q[inp.P:], k[inp.P:], v[inp.P:], inp.dec_kv[layer], inp.C))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


AttnFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def layer_forward(m: Llama, w: Layer, x: Tensor, cos: Tensor, sin: Tensor,
                  attn: AttnFn | None) -> Tensor:
    """One decoder layer on ``x [T, h]``; ``attn`` None skips attention (the ``lin`` set)."""
    s = m.shape
    t, h, d = x.shape[0], s.hidden_size, s.head_dim
    y = F.rms_norm(x, (h,), w.ln1, s.rms_eps)
    q, k, v = F.linear(y, w.wqkv, w.bqkv).split(
        [s.num_heads * d, s.num_kv_heads * d, s.num_kv_heads * d], dim=-1)
    q = apply_rope(q.view(t, s.num_heads, d), cos, sin)
    k = apply_rope(k.view(t, s.num_kv_heads, d), cos, sin)
    o = q.reshape(t, -1) if attn is None else attn(q, k, v.view(t, s.num_kv_heads, d))
    x = x + F.linear(o, w.wo)
    gate, up = F.linear(F.rms_norm(x, (h,), w.ln2, s.rms_eps), w.wgu).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, w.wd)


def forward(m: Llama, inp: StepInputs, attention: bool = True) -> Tensor:
    """Embedding and all layers; returns the hidden states ``[N, h]``."""
    x = F.embedding(inp.ids, m.embed)
    cos, sin = m.cos[inp.pos], m.sin[inp.pos]
    for i, w in enumerate(m.layers):
        attn = None if not attention else (
            lambda q, k, v, i=i: _attention(m, q, k, v, inp, i))
        x = layer_forward(m, w, x, cos, sin, attn)
    return x


def head_forward(m: Llama, x: Tensor) -> Tensor:
    """Final norm, LM head, fp32 logits and argmax on the rows ``x [S, h]``."""
    y = F.rms_norm(x, (m.shape.hidden_size,), m.norm, m.shape.rms_eps)
    return F.linear(y, m.head).float().argmax(dim=-1)


def run_step(m: Llama, inp: StepInputs) -> Tensor:
    """A whole step: forward with attention, then the head on ``inp.rows``."""
    x = forward(m, inp)
    return head_forward(m, x if inp.rows is None else x[inp.rows])


# -- inputs -------------------------------------------------------------------------------------


def kv_elems_per_token(shape: LlamaShape) -> int:
    """Pool elements per token: K and V over all layers, ``2 L H_kv D``."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim


def new_pool(shape: LlamaShape, tokens: int, dtype: torch.dtype, device: str,
             gen: torch.Generator) -> Tensor:
    """The flat KV pool of ``tokens`` tokens, filled with random values (never zeros)."""
    pool = torch.empty(tokens * kv_elems_per_token(shape), dtype=dtype, device=device)
    step = 1 << 28
    for start in range(0, pool.numel(), step):
        pool[start:start + step].normal_(0.0, 1.0, generator=gen)
    return pool


def carve(pool: Tensor, shape: LlamaShape, offset: int, n_seqs: int, seq_tokens: int) -> Tensor:
    """A ``[L, 2, n_seqs, Hkv, seq_tokens, D]`` view of the pool from token ``offset``."""
    e = kv_elems_per_token(shape)
    flat = pool[offset * e:(offset + n_seqs * seq_tokens) * e]
    return flat.view(shape.num_layers, 2, n_seqs, shape.num_kv_heads, seq_tokens,
                     shape.head_dim)


def step_inputs(m: Llama, p: int, k: int, b: int, c: int, pool: Tensor | None,
                gen: torch.Generator, head: bool = True) -> StepInputs:
    """Tensors of a step: random token ids, positions, KV views, head rows.

    ``pool`` None gives a chunk without a cache (the KV-sizing profile run). Head rows are the
    chunk's last token and every decode token.
    """
    dev = m.embed.device
    n = p + b
    ids = torch.randint(0, m.shape.vocab_size, (n,), device=dev, generator=gen)
    pos = torch.cat([torch.arange(k, k + p, device=dev), torch.full((b,), c, device=dev,
                                                                     dtype=torch.long)])
    chunk_kv = carve(pool, m.shape, 0, 1, k + p) if p and pool is not None else None
    dec_kv = carve(pool, m.shape, k + p if p else 0, b, c + 1) if b else None
    rows = torch.arange(p - 1 if p else 0, n, device=dev) if head else None
    return StepInputs(ids, pos, p, k, b, c, chunk_kv, dec_kv, rows)


def make_fn(m: Llama, s: Shape, pool: Tensor | None, gen: torch.Generator) -> Callable[[], Tensor]:
    """The closure that runs shape ``s`` over inputs prepared now (graph-capturable)."""
    if s.set == "lin":
        inp = step_inputs(m, s.P, 0, 0, 0, None, gen, head=False)
        return lambda: forward(m, inp, attention=False)
    if s.set == "head":
        x = torch.randn(s.S, m.shape.hidden_size, dtype=m.embed.dtype, device=m.embed.device,
                        generator=gen)
        return lambda: head_forward(m, x)
    inp = step_inputs(m, s.P, s.K, s.B, s.C, pool, gen)
    return lambda: run_step(m, inp)


# -- the float64 correctness gate (METHOD.md; profiling.md §5.3) --------------------------------


def ref_attention(q: Tensor, k: Tensor, v: Tensor, prefix: int) -> Tensor:
    """Reference attention in the inputs' dtype: ``q [M, Hq, D]``, ``k, v [K+M, Hkv, D]``;
    query i sees keys ``0 .. prefix + i`` (lower-right causal); KV heads repeated for GQA."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("mhd,shd->hms", q, k) / math.sqrt(q.shape[-1])
    allowed = (torch.arange(k.shape[0], device=q.device)[None, :]
               <= prefix + torch.arange(q.shape[0], device=q.device)[:, None])
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return torch.einsum("hms,shd->mhd", probs, v).reshape(q.shape[0], -1)


def _rel_err(out: Tensor, ref: Tensor) -> float:
    out = out.double()
    return float((out - ref).norm() / ref.norm())


def attention_errors(m: Llama, gen: torch.Generator) -> dict[str, float]:
    """Relative errors of ``attend_prefill`` (fresh and after a prefix) and ``attend_decode``
    in the model's dtype against ``ref_attention`` in float64, on random inputs."""
    s, dt, dev = m.shape, m.embed.dtype, m.embed.device
    hq, hkv, d = s.num_heads, s.num_kv_heads, s.head_dim

    def rnd(*size: int) -> Tensor:
        return torch.randn(size, dtype=dt, device=dev, generator=gen)

    errs = {}
    for name, p, k in (("prefill", 29, 0), ("chunked_prefill", 37, 53)):
        q, kn, vn = rnd(p, hq, d), rnd(p, hkv, d), rnd(p, hkv, d)
        cache = rnd(2, 1, hkv, k + p, d) if k else None
        out = attend_prefill(q, kn, vn, cache, k, m.prefix_mode)
        keys = kn if cache is None else cache[0, 0].transpose(0, 1)
        vals = vn if cache is None else cache[1, 0].transpose(0, 1)
        errs[name] = _rel_err(out, ref_attention(q.double(), keys.double(), vals.double(), k))
    b, c = 3, 45
    q, kn, vn, cache = rnd(b, hq, d), rnd(b, hkv, d), rnd(b, hkv, d), rnd(2, b, hkv, c + 1, d)
    out = attend_decode(q, kn, vn, cache, c)
    ref = torch.cat([ref_attention(q[i:i + 1].double(), cache[0, i].transpose(0, 1).double(),
                                   cache[1, i].transpose(0, 1).double(), c) for i in range(b)])
    errs["decode"] = _rel_err(out, ref)
    return errs


def _ref_layer(m: Llama, w: Layer, x: Tensor, inp: StepInputs) -> Tensor:
    """One decoder layer in float64, written independently of ``layer_forward``."""
    s, d = m.shape, m.shape.head_dim

    def lin(t: Tensor, wt: Tensor, bias: Tensor | None = None) -> Tensor:
        return t @ wt.double().T + (0 if bias is None else bias.double())

    def norm(t: Tensor, g: Tensor) -> Tensor:
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + s.rms_eps) * g.double()

    inv = s.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    ang = inp.pos.double()[:, None] * inv[None]

    def rope(t: Tensor) -> Tensor:  # pairs (i, i + D/2) rotated by the angle
        a, b = t[..., :d // 2], t[..., d // 2:]
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    qkv = lin(norm(x, w.ln1), w.wqkv, w.bqkv)
    nq, nk = s.num_heads * d, s.num_kv_heads * d
    q = rope(qkv[:, :nq].reshape(-1, s.num_heads, d))
    k = rope(qkv[:, nq:nq + nk].reshape(-1, s.num_kv_heads, d))
    v = qkv[:, nq + nk:].reshape(-1, s.num_kv_heads, d)
    p, outs = inp.P, []
    ck = inp.chunk_kv[0].double() if inp.chunk_kv is not None else None
    keys = k[:p] if ck is None else torch.cat([ck[0, 0, :, :inp.K].transpose(0, 1), k[:p]])
    vals = v[:p] if ck is None else torch.cat([ck[1, 0, :, :inp.K].transpose(0, 1), v[:p]])
    outs.append(ref_attention(q[:p], keys, vals, inp.K))
    dk = inp.dec_kv[0].double() if inp.dec_kv is not None else None
    for i in range(inp.B):
        assert dk is not None
        keys = torch.cat([dk[0, i, :, :inp.C].transpose(0, 1), k[p + i:p + i + 1]])
        vals = torch.cat([dk[1, i, :, :inp.C].transpose(0, 1), v[p + i:p + i + 1]])
        outs.append(ref_attention(q[p + i:p + i + 1], keys, vals, inp.C))
    x = x + lin(torch.cat(outs), w.wo)
    gu = lin(norm(x, w.ln2), w.wgu)
    g, u = gu[:, :s.intermediate_size], gu[:, s.intermediate_size:]
    return x + lin(g * torch.sigmoid(g) * u, w.wd)


def layer_error(m: Llama, gen: torch.Generator) -> float:
    """Relative error of layer 0's update ``layer(x) - x`` on a mixed step (a chunk of 11
    after 7 cached tokens and 2 decodes at context 9) against ``_ref_layer``."""
    s, dt, dev = m.shape, m.embed.dtype, m.embed.device
    pool = new_pool(s, 7 + 11 + 2 * 10, dt, dev, gen)
    inp = step_inputs(m, 11, 7, 2, 9, pool, gen)
    ref_inp = step_inputs(m, 11, 7, 2, 9, pool.clone(), gen)
    ref_inp.pos = inp.pos
    x = 0.05 * torch.randn(13, s.hidden_size, dtype=dt, device=dev, generator=gen)
    cos, sin = m.cos[inp.pos], m.sin[inp.pos]
    out = layer_forward(m, m.layers[0], x, cos, sin,
                        lambda q, k, v: _attention(m, q, k, v, inp, 0))
    ref = _ref_layer(m, m.layers[0], x.double(), ref_inp) - x.double()
    return _rel_err(out - x, ref)


def check_correctness(m: Llama, seed: int) -> dict[str, float]:
    """Run the gate; returns the relative errors, or raises when one exceeds ``GATE_TOL``.

    Raises:
        ProfileError: the implementation disagrees with the float64 reference.
    """
    gen = torch.Generator(device=m.embed.device).manual_seed(seed + 1)
    with torch.inference_mode():
        errs = attention_errors(m, gen)
        errs["layer"] = layer_error(m, gen)
    tol = GATE_TOL.get(m.embed.dtype, 3e-2)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        raise ProfileError(f"correctness gate failed against float64 (tolerance {tol:g}): "
                           + ", ".join(f"{k} rel. error {v:.3g}" for k, v in bad.items()),
                           field="checks.correctness")
    return errs
