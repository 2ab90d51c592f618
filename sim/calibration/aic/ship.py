"""The shipped ``*-aic`` profiles and the command that regenerates them.

    python -m sim.calibration.aic --all --out profiles/
    python -m sim.calibration.aic --only h100/qwen3-14b-aic --out profiles/

Output is deterministic (fixed ``source.created``, sorted keys, table lookups only). Model
configs come from aiconfigurator-core's ``model_configs`` or, for Llama-2-7B, CodeLlama-34B and
Qwen3-14B, from the shared ``model_configs`` folder (``$SIMLB_SHARED``); Llama-2-70B's shape is
built in (``model.BUILTIN``). The written profiles are self-contained.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from sim.calibration.aic.build import Options, derive, summary
from sim.model.profile import write_profile


@dataclass(frozen=True)
class Target:
    """One shipped profile: the config reference, its short name, GPU system and TP."""

    model: str
    name: str
    gpu: str
    tp: int = 1

    @property
    def profile(self) -> str:
        short = self.gpu.removesuffix("_sxm")
        return f"{short}/{self.name}{f'-tp{self.tp}' if self.tp > 1 else ''}-aic"


_H100 = (
    ("Qwen/Qwen3-14B", "qwen3-14b", 1),
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b", 1),
    ("meta-llama/Meta-Llama-3.1-8B", "llama-3.1-8b", 1),
    ("codellama/CodeLlama-34b-Instruct-hf", "codellama-34b", 2),
    ("meta-llama/Llama-2-70b-hf", "llama-2-70b", 4),
    ("meta-llama/Meta-Llama-3.1-70B", "llama-3.1-70b", 4),
    ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b", 2),
    ("Qwen/Qwen3-32B", "qwen3-32b", 2),
    ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b", 1),
)
TARGETS: tuple[Target, ...] = (
    *(Target(m, n, "h100_sxm", tp) for m, n, tp in _H100),
    *(Target(m, n, gpu, 1) for gpu in ("h200_sxm", "a100_sxm")
      for m, n in (("Qwen/Qwen3-14B", "qwen3-14b"),
                   ("meta-llama/Meta-Llama-3.1-8B", "llama-3.1-8b"))),
    Target("meta-llama/Meta-Llama-3.1-70B", "llama-3.1-70b", "h200_sxm", 4),
    # the GPU of the measured vLLM 0.19 runs (LLMServingSim's; a check on another GPU and engine)
    Target("meta-llama/Meta-Llama-3.1-8B", "llama-3.1-8b", "rtx_pro_6000_server", 1),
    Target("Qwen/Qwen3-32B", "qwen3-32b", "rtx_pro_6000_server", 2),
)
#: config names that differ from the shared folder's file names
SHARED_NAMES = {"meta-llama/Llama-2-7b-hf": "llama-2-7b-hf",
                "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b-instruct-hf"}


def main(argv: list[str] | None = None) -> int:
    """Derive every shipped ``*-aic`` profile (or ``--only`` some) into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m sim.calibration.aic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("profiles"), help="output folder")
    parser.add_argument("--all", action="store_true", help="every shipped target")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this profile (repeatable), e.g. h100/qwen3-14b-aic")
    args = parser.parse_args(argv)
    if not args.all and not args.only:
        parser.error("give --all or --only NAME")
    for t in TARGETS:
        if args.only and t.profile not in args.only:
            continue
        ref = SHARED_NAMES.get(t.model, t.model)
        data = derive(Options(model=ref, gpu=t.gpu, tp=t.tp, model_name=t.name,
                              name=t.profile), echo=print)
        data["metadata"]["command"] = f"python -m sim.calibration.aic --only {t.profile}"
        path = write_profile(data, args.out / f"{t.profile}.json")
        print(f"{path}: {summary(data)}")  # noqa: T201 (the CLI reports what it wrote)
    return 0
