"""Disaggregated prefill/decode: per-request transfer columns and their summary block.

Only runs of a cluster with prefill/decode roles have these columns (``requests.parquet``):

``prefill_node``      the node that ran the prompt; -1: prefilled on its decode node (``node``)
``transfer_bytes``    KV bytes moved to the decode node (0 without a transfer)
``transfer_s``        first token on the prefill node -> KV on the decode node, s (NaN: none);
                      the link time less what the layer-by-layer overlap hides, plus queueing
``transfer_queue_s``  part of the link time spent waiting for busy ports, s
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: the percentiles reported for the transfer times
_QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


def transfer_columns(columns: dict[str, Any]) -> dict[str, np.ndarray]:
    """The transfer records (lists from the model) as typed numpy columns."""
    return {"prefill_node": np.asarray(columns["prefill_node"], dtype=np.int64),
            "transfer_bytes": np.asarray(columns["transfer_bytes"], dtype=np.int64),
            "transfer_s": np.asarray(columns["transfer_s"], dtype=np.float64),
            "transfer_queue_s": np.asarray(columns["transfer_queue_s"], dtype=np.float64)}


def _dist(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return dict.fromkeys(("mean", "max", *_QUANTILES))
    out: dict[str, float | None] = {k: float(np.percentile(x, q)) for k, q in _QUANTILES.items()}
    out["mean"] = float(x.mean())
    out["max"] = float(x.max())
    return out


def disagg_summary(req: dict[str, np.ndarray], measured: np.ndarray,
                   window_s: float) -> dict[str, object]:
    """The ``disaggregation`` block of ``summary.json`` over the measured requests.

    ``transfers`` and ``local_prefills`` count measured requests prefilled on a prefill node
    and on their decode node; ``transfer_s`` and ``transfer_queue_s`` are distributions over
    the transferred ones; ``transfer_GB`` the bytes moved (1e9) and ``transfer_GBps`` their
    mean rate over the window; ``ttft_with_transfer_s``: TTFT had the first token been
    streamed by the decode node after the transfer (as setups that stream only from the decode
    node see it).
    """
    moved = measured & np.isfinite(req["transfer_s"])
    local = measured & (req["prefill_node"] < 0) & np.isfinite(req["first_token_s"])
    n_bytes = float(req["transfer_bytes"][measured].sum())
    ttft = (req["first_token_s"] - req["arrival_s"] + np.where(np.isfinite(req["transfer_s"]),
                                                                req["transfer_s"], 0.0))
    ttft = ttft[measured & np.isfinite(ttft)]
    return {
        "transfers": int(moved.sum()),
        "local_prefills": int(local.sum()),
        "transfer_s": _dist(req["transfer_s"][moved]),
        "transfer_queue_s": _dist(req["transfer_queue_s"][moved]),
        "transfer_GB": n_bytes / 1e9,
        "transfer_GBps": n_bytes / 1e9 / window_s if window_s > 0 else math.nan,
        "ttft_with_transfer_s": _dist(ttft),
    }
