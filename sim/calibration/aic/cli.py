"""``simlb profile derive``: a cost profile from aiconfigurator-core's measured kernel tables.

Only click is imported at module level; the derivation (pandas, scipy, the parquet tables) is
imported inside the command, so ``simlb --help`` stays fast. Bad input prints one line and
exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sim.errors import InputError


@click.command(name="derive")
@click.option("--model", required=True, metavar="NAME|CONFIG",
              help="Org/Name from aiconfigurator-core's model_configs (e.g. Qwen/Qwen3-32B), "
                   "a name in the shared model_configs, or a Hugging Face config.json path.")
@click.option("--gpu", required=True, metavar="SYSTEM",
              help="aiconfigurator system, e.g. h100_sxm, h200_sxm, a100_sxm.")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tensor-parallel degree.")
@click.option("--engine", metavar="vllm==X",
              help="vLLM version of the tables [default: the newest for the GPU].")
@click.option("--dtype", default="bfloat16", show_default=True, help="Weight dtype.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True),
              default=0.9, show_default=True, help="vLLM's fraction of total memory.")
@click.option("--block-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="KV block size in tokens.")
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=8192,
              show_default=True, help="Tokens of vLLM's KV-sizing profile run.")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Logits rows of vLLM's KV-sizing profile run.")
@click.option("--name", help="Profile name [default: <gpu>/<model>[-tpN]-aic].")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Profile file to write.")
def derive_cmd(model: str, gpu: str, tp: int, engine: str | None, dtype: str,
               gpu_memory_utilization: float, block_size: int, max_num_batched_tokens: int,
               max_num_seqs: int, name: str | None, out: Path) -> None:
    """Derive a cost profile from NVIDIA aiconfigurator-core's measured vLLM op tables.

    Needs the optional extra: pip install -e '.[calibrate]'.
    """
    try:
        from sim.calibration.aic.build import Options, derive, summary
        from sim.model.profile import write_profile

        if out.is_dir():
            raise InputError("is a folder; give a file name for the profile", source=str(out))
        opts = Options(model=model, gpu=gpu, tp=tp, engine=engine, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
                       max_num_batched_tokens=max_num_batched_tokens,
                       max_num_seqs=max_num_seqs, name=name)
        data = derive(opts, echo=lambda line: click.echo(line, err=True))
        path = write_profile(data, out)
    except InputError as exc:
        click.echo(f"simlb: error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{path}: {summary(data)}")
