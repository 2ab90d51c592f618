"""The measurement grid of ``simlb profile`` (``docs/profiling.md``).

A step shape is ``(P, K, B, C)``: one prefill chunk of ``P`` tokens after ``K`` cached tokens
(``P = 0``: none) and ``B`` decoding sequences of ``C`` cached tokens each. Sets:

* ``lin``: N tokens through embedding and every layer without attention (``P = N``);
* ``head``: final norm, LM head and argmax on ``S`` rows;
* ``decode``, ``prefill``, ``mixed``: whole steps (attention and LM head included);
* ``heldout``: random off-grid whole steps, each timed twice (``rep`` 0 and 1), never fitted.

Every shape is kept only where it fits the KV pool (``K + P + B (C + 1)`` tokens) and the
model's context limit, as in Vidur's memory filter (profiling.md §2.1). Pure Python and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_SETS = ("decode", "prefill", "mixed")


@dataclass(frozen=True)
class Shape:
    """One timed shape (token counts; ``S`` = logits rows of the LM head)."""

    set: str
    P: int = 0
    K: int = 0
    B: int = 0
    C: int = 0
    S: int = 0
    rep: int = 0

    @property
    def kv_tokens(self) -> int:
        """KV-pool tokens the shape needs: the chunk's ``K + P`` and the decodes' ``B (C+1)``."""
        if self.set in ("lin", "head"):
            return 0
        return (self.K + self.P if self.P else 0) + self.B * (self.C + 1)


def step(set_name: str, p: int, k: int, b: int, c: int, rep: int = 0) -> Shape:
    """A whole-step shape; its head rows are one per chunk plus one per decode."""
    return Shape(set_name, p, k if p else 0, b, c if b else 0, (1 if p else 0) + b, rep)


@dataclass(frozen=True)
class GridSpec:
    """A named grid: the values of each set and the number of held-out steps."""

    name: str
    lin_n: tuple[int, ...]
    head_s: tuple[int, ...]
    decode_b: tuple[int, ...]
    decode_c: tuple[int, ...]
    prefill_p: tuple[int, ...]
    prefill_k: tuple[int, ...]
    mixed: tuple[tuple[int, int, int, int], ...]
    heldout: int


GRIDS: dict[str, GridSpec] = {
    # profiling.md §5.2: ~1.2x spacing plus points just above powers of two (GEMM staircase)
    "full": GridSpec(
        "full",
        lin_n=(1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 136, 160, 192, 224, 256, 264,
               320, 384, 448, 512, 520, 640, 768, 896, 1024, 1040, 1280, 1536, 1792, 2048, 2080,
               2560, 3072, 3584, 4096, 4160, 5120, 6144, 7168, 8192, 8320, 10240, 12288, 14336,
               16384),
        head_s=(1, 8, 32, 128, 256, 512),
        decode_b=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        decode_c=(128, 512, 1024, 2048, 4096, 8192, 16384, 32768),
        prefill_p=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384),
        prefill_k=(0, 2048, 8192),
        mixed=((256, 0, 8, 1024), (256, 1024, 32, 2048), (256, 0, 128, 512),
               (2048, 0, 8, 1024), (2048, 2048, 32, 2048), (2048, 0, 128, 512)),
        heldout=24),
    # about half the shapes (profiling.md §6.4 "if it must be cut": 24 lin points, no 32k)
    "quick": GridSpec(
        "quick",
        lin_n=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 136, 192, 256, 264, 384, 512, 520, 768,
               1024, 1040, 1536, 2048, 3072, 4096, 6144, 8192),
        head_s=(1, 8, 32, 128, 256),
        decode_b=(1, 4, 16, 64, 256),
        decode_c=(128, 1024, 4096, 16384),
        prefill_p=(64, 256, 1024, 4096, 8192),
        prefill_k=(0, 4096),
        mixed=((256, 0, 16, 1024), (256, 1024, 64, 512), (2048, 0, 16, 1024),
               (2048, 2048, 64, 512)),
        heldout=16),
    # the CPU test grid: seconds with the tiny model
    "ci": GridSpec(
        "ci",
        lin_n=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
        head_s=(1, 4, 16, 64),
        decode_b=(1, 4, 16, 64),
        decode_c=(64, 256, 1024),
        prefill_p=(16, 64, 256, 512),
        prefill_k=(0, 256),
        mixed=((64, 0, 4, 256), (256, 256, 16, 64), (128, 0, 8, 1024)),
        heldout=8),
}


def _fits(s: Shape, pool_tokens: int, max_position: int, max_tokens: int) -> bool:
    """Whether a step fits the KV pool, the context limit and the ``lin`` grid."""
    return (s.kv_tokens <= pool_tokens and max_position >= s.K + s.P
            and (not s.B or max_position >= s.C + 1) and max_tokens >= s.P + s.B)


def grid_shapes(spec: GridSpec, pool_tokens: int, max_position: int) -> list[Shape]:
    """The fitted shapes of a grid (no held-out steps), in grid order, filtered to fit."""
    n_max = max(spec.lin_n)
    shapes = [Shape("lin", P=n) for n in spec.lin_n]
    shapes += [Shape("head", S=s) for s in spec.head_s]
    steps = [step("decode", 0, 0, b, c) for b in spec.decode_b for c in spec.decode_c]
    steps += [step("prefill", p, k, 0, 0) for p in spec.prefill_p for k in spec.prefill_k]
    steps += [step("mixed", *m) for m in spec.mixed]
    return shapes + [s for s in steps if _fits(s, pool_tokens, max_position, n_max)]


def _loguniform(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer drawn log-uniformly from ``[lo, hi]``."""
    return round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def heldout_shapes(spec: GridSpec, fitted: list[Shape], pool_tokens: int, max_position: int,
                   rng: np.random.Generator) -> list[Shape]:
    """Random off-grid decode, prefill and mixed steps inside the grid's ranges, each twice.

    Kinds cycle decode, mixed, prefill; B, C and P are log-uniform over the fitted ranges, K is
    0 half the time and log-uniform otherwise. Draws that do not fit are redrawn.
    """
    steps = [s for s in fitted if s.set in STEP_SETS]
    if not steps:
        return []
    bs = [s.B for s in steps if s.B] or [1]
    cs = [s.C for s in steps if s.B] or [1]
    ps = [s.P for s in steps if s.P] or [1]
    k_max = max([s.K for s in steps] + [0])
    n_max = max(spec.lin_n)
    out: list[Shape] = []
    for i in range(spec.heldout):
        kind = ("decode", "mixed", "prefill")[i % 3]
        for _ in range(200):
            b = _loguniform(rng, 1, max(bs)) if kind != "prefill" else 0
            c = _loguniform(rng, min(cs), max(cs)) if b else 0
            p = _loguniform(rng, min(ps), max(ps)) if kind != "decode" else 0
            k = _loguniform(rng, 16, k_max) if p and k_max >= 16 and rng.random() < 0.5 else 0
            cand = step("heldout", p, k, b, c)
            if _fits(cand, pool_tokens, max_position, n_max):
                out += [cand, step("heldout", p, k, b, c, rep=1)]
                break
    return out


def plan(spec: GridSpec, pool_tokens: int, max_position: int,
         rng: np.random.Generator) -> list[Shape]:
    """Every shape to time, fitted and held-out, in one shuffled order (profiling.md §5.3)."""
    fitted = grid_shapes(spec, pool_tokens, max_position)
    shapes = fitted + heldout_shapes(spec, fitted, pool_tokens, max_position, rng)
    return [shapes[i] for i in rng.permutation(len(shapes))]


def pool_tokens_needed(spec: GridSpec, max_position: int) -> int:
    """KV-pool tokens the largest step of an unconstrained grid needs (sizes the CPU pool)."""
    shapes = grid_shapes(spec, 1 << 62, max_position)
    return max([s.kv_tokens for s in shapes] + [1])
