"""Multi-turn sessions: conversations whose later turns extend the earlier prompts and answers.

The arrival process gives session *start* times. Turn ``k + 1`` of a session arrives an
exponential think time after turn ``k`` *arrived*. This is an open-loop model: it ignores when
turn ``k`` is answered, so the request stream is the same for every routing strategy (common
random numbers). Real users wait for the answer before typing, so the model is faithful only
when the mean think time is long compared with response times; with short think times a turn
can arrive before the previous one has finished and then misses its cache.

Prompt layout of a session with prefix ``P`` (possibly absent), messages ``m_0, m_1, ...`` and
outputs ``o_0, o_1, ...``: turn ``k`` sends ``P m_0 o_0 ... m_(k-1) o_(k-1) m_k``, so turn
``k + 1``'s prompt is turn ``k``'s prompt + turn ``k``'s output + a new message. Messages and
outputs that a later turn reuses get fresh, non-negative, path-unique segment keys; the final
turn's message and output are used once and get key ``-1`` (the final turn is the last one
arriving before ``duration_s``: a session cut by the window ends there). ``output_key`` of a
non-final turn is the key under which its output appears in the next turn's prompt.
``session_id`` is the session's index in start order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from sim.registry import Registry
from sim.spec import ComponentSpec, StrictModel, build_params
from sim.workload.base import MAX_SEGMENT_KEY
from sim.workload.lengths import LengthDistribution, lengths
from sim.workload.prefixes import concat_ranges

sessions: Registry[type[MultiTurn]] = Registry("sessions")


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.shape[0], dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


@sessions.register("multi_turn")
class MultiTurn:
    """Sessions of ``K`` turns (``K`` from ``turns``) spaced by exponential think times.

    Analytic request rate: ``session_rate * E[K]``. Over a finite window ``[0, T)`` fewer
    requests arrive: sessions that would have started before ``t = 0`` are absent, so the
    expected count is short by about ``session_rate * think_time_s * E[K (K - 1)] / 2``
    (see ``expected_requests``); turns that would arrive at or after ``T`` are dropped.
    """

    class Params(StrictModel):
        """Parameters of ``multi_turn``."""

        turns: ComponentSpec = Field(
            description="distribution of the number of turns per session, any entry of the "
                        "lengths registry (its '_tokens' parameters then count turns), "
                        "e.g. {name: uniform, params: {low_tokens: 1, high_tokens: 6}}")
        think_time_s: float = Field(gt=0, description="mean gap between turn arrivals, s")

    params: Params

    def __init__(self, params: Params, *, path: str = "sessions") -> None:
        self.params = params
        cls, turn_params = build_params(lengths, params.turns, f"{path}.params.turns")
        self.turns: LengthDistribution = cls(turn_params)

    def mean_turns(self) -> float:
        """``E[K]``, the mean number of turns per session."""
        return self.turns.mean()

    def request_rate_rps(self, session_rate_rps: float) -> float:
        """Long-run request rate ``session_rate * E[K]``."""
        return session_rate_rps * self.turns.mean()

    def expected_requests(self, session_rate_rps: float, duration_s: float) -> float:
        """``E[requests in [0, T)]`` for stationary session starts, for ``T >> K * think``.

        Turn ``k`` (from 1) arrives ``D_k`` (a sum of ``k - 1`` think times) after its session
        starts, so ``E[N] = rate * sum_k P(K >= k) * E[(T - D_k)^+]``, which is
        ``rate * (T * E[K] - think * E[K (K - 1)] / 2)`` once ``P(D_k > T)`` is negligible.
        Needs a stationary start process (not ``piecewise``).
        """
        mean_k = self.turns.mean()
        second = self.turns.variance() + mean_k**2
        deficit = self.params.think_time_s * (second - mean_k) / 2.0
        return session_rate_rps * (duration_s * mean_k - deficit)

    def turn_times(self, rng: np.random.Generator, starts_s: np.ndarray,
                   duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the turns of each session; drop those arriving at or after ``duration_s``.

        Args:
            rng: the sessions stream; draws ``K`` for every session, then one think time per
                turn (the first turn's is drawn and unused, keeping the draw count simple).
            starts_s: sorted session start times, all below ``duration_s``.
            duration_s: end of the window, seconds.

        Returns:
            ``(session, turn, arrival_s)``, session-major: session index into ``starts_s``,
            turn index from 0, arrival time. Every session keeps at least its first turn.
        """
        count = self.turns.sample(rng, starts_s.shape[0])
        first = _exclusive_cumsum(count)
        think = rng.exponential(self.params.think_time_s, size=int(count.sum()))
        think[first] = 0.0
        # One running sum for all sessions, rebased per session: the rounding error grows with
        # the total think time (about 1e-8 s after 1e7 s), far below any modelled delay.
        elapsed = np.cumsum(think)
        elapsed -= np.repeat(elapsed[first], count)
        session = np.repeat(np.arange(starts_s.shape[0], dtype=np.int64), count)
        turn = np.arange(session.shape[0], dtype=np.int64) - np.repeat(first, count)
        arrival_s = np.repeat(starts_s, count) + elapsed
        keep = arrival_s < duration_s
        return session[keep], turn[keep], arrival_s[keep]

    @staticmethod
    def segments(session: np.ndarray, turn: np.ndarray, message_tokens: np.ndarray,
                 output_tokens: np.ndarray, group: np.ndarray, prefix_tokens: int,
                 first_key: int) -> SessionSegments:
        """Lay out the prompts of session-major turns; see ``SessionSegments``."""
        return SessionSegments.build(session, turn, message_tokens, output_tokens, group,
                                     prefix_tokens, first_key)


@dataclass(frozen=True, slots=True)
class SessionSegments:
    """The segment columns of multi-turn requests, in the session-major input order.

    Attributes:
        seg_ptr: int64 CSR pointers, ``n + 1`` entries (``sim.workload.base``).
        seg_key: int64 segment keys.
        seg_len: int64 segment lengths, tokens.
        prompt_tokens: int64 total prompt length of each request.
        output_key: int64 key of each request's output, ``-1`` for a session's final turn.
        keys_used: how many keys from ``first_key`` on were allocated.
    """

    seg_ptr: np.ndarray
    seg_key: np.ndarray
    seg_len: np.ndarray
    prompt_tokens: np.ndarray
    output_key: np.ndarray
    keys_used: int

    @classmethod
    def build(cls, session: np.ndarray, turn: np.ndarray, message_tokens: np.ndarray,
              output_tokens: np.ndarray, group: np.ndarray, prefix_tokens: int,
              first_key: int) -> SessionSegments:
        """Lay out every session as ``P m_0 o_0 m_1 ...``, then cut each turn's prompt from it.

        Args:
            session, turn: session-major request coordinates (``turn_times``), int64.
            message_tokens, output_tokens: int64 per request.
            group: int64 prefix group per *session* (``-1`` none); group ``g`` has key ``g``.
            prefix_tokens: length of a group prefix.
            first_key: the first key sessions may allocate (after the prefix groups).
        """
        turns = np.bincount(session, minlength=group.shape[0]).astype(np.int64)
        has_prefix = (group >= 0).astype(np.int64)
        seq_start = _exclusive_cumsum(has_prefix + 2 * turns - 1)
        final = turn == turns[session] - 1
        rank = np.cumsum(~final) - 1
        keys_used = 2 * int((~final).sum())
        if first_key + keys_used > MAX_SEGMENT_KEY:
            raise ValueError(f"{first_key + keys_used} segment keys exceed MAX_SEGMENT_KEY")
        message_key = np.where(final, -1, first_key + 2 * rank)
        output_key = np.where(final, -1, first_key + 2 * rank + 1)
        size = int((has_prefix + 2 * turns - 1).sum())
        seq_key = np.full(size, -1, dtype=np.int64)
        seq_len = np.zeros(size, dtype=np.int64)
        carrier = np.flatnonzero(has_prefix)
        seq_key[seq_start[carrier]] = group[carrier]
        seq_len[seq_start[carrier]] = prefix_tokens
        message_at = seq_start[session] + has_prefix[session] + 2 * turn
        seq_key[message_at], seq_len[message_at] = message_key, message_tokens
        seq_key[message_at[~final] + 1] = output_key[~final]
        seq_len[message_at[~final] + 1] = output_tokens[~final]
        count = has_prefix[session] + 2 * turn + 1
        seg_ptr = np.zeros(session.shape[0] + 1, dtype=np.int64)
        np.cumsum(count, out=seg_ptr[1:])
        index = concat_ranges(seq_start[session], count)
        seg_len = seq_len[index]
        prompt_tokens = (np.add.reduceat(seg_len, seg_ptr[:-1]) if session.shape[0]
                         else np.zeros(0, dtype=np.int64))
        return cls(seg_ptr, seq_key[index], seg_len, prompt_tokens, output_key, keys_used)
