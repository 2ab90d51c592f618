"""A request's life on a node's batcher after admission: chunks done, decoding, preemption,
leaving.

``RequestLifecycle`` (on ``sim.model.batcher_kv.KVBookkeeping``) is the middle layer of
``sim.model.batcher.ContinuousBatcher``:

* **Applying finished iterations** (``apply``): the decode clock advances, the decodes that
  reached their last token finish, and each prefill chunk of the plan is booked
  (``_complete_chunk``): a sequence whose last token was computed samples a new token (the
  first one ends the TTFT), then finishes, is handed off (``prefill_only``) or decodes.
* **Decode phase** (``_join_decode``, ``_leave_decode``): a request whose prefill is done joins
  the decode set (``sim.model.decode_set``), which tracks decoding requests in aggregate.
* **Preemption** (``_preempt``): vLLM's recompute preemption: the request's blocks are freed
  (full ones stay cached) and it goes back to the head of the queue.
* **Leaving** (``_finish``, ``_hand_off``, ``cancel``, ``take_waiting``): its blocks are freed,
  its record dropped, and (except for ``take_waiting``) its ``Outcome`` returned. Every way out
  calls the batch-policy hook ``on_leave``.
* **Observation** (``in_flight``, ``generated``, ``holds``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sim.model.batcher_kv import KVBookkeeping
from sim.model.decode_set import DecodeSet
from sim.model.request_state import RequestState
from sim.model.requests import CANCELLED, COMPLETED, UNFINISHED, Outcome

if TYPE_CHECKING:
    from sim.model.batcher import Plan


class RequestLifecycle(KVBookkeeping):
    """Applying iterations, decode phase, preemption and the ways out of a node (the
    batcher's middle layer, on top of the KV bookkeeping)."""

    # state and helpers owned by the batcher (declared for the type checker)
    node_id: int
    reqs: dict[int, RequestState]
    partial: int | None
    it: int
    _dec: DecodeSet
    preemptions: int
    recent_ttft_s: float
    recent_e2e_s: float
    decode_clock_stalls: bool
    first_tokens: list[int]
    preemption_gaps: list[tuple[float, float]]

    if TYPE_CHECKING:
        def on_leave(self, rid: int, waiting: bool) -> None: ...  # a batch-policy hook

    # -- applying finished iterations --------------------------------------------------------

    def apply(self, plan: Plan, iterations: int, now: float) -> list[Outcome]:
        """Account for ``iterations`` finished iterations of ``plan``; return the requests
        that finished (requests whose first token came are left in ``first_tokens``)."""
        first = self.it + 1
        self.it += iterations
        if iterations > 1:
            self.kv.allocate(self._dec.blocks(self.it) - self._dec.blocks(first))
        finished: list[Outcome] = []
        if self.first_tokens:
            self.first_tokens.clear()
        reqs = self.reqs
        heap = self._dec.finish_heap
        if heap and heap[0][0] <= self.it:
            for rid in self._dec.pop_finished(self.it):
                st = reqs[rid]
                finished.append(self._finish(rid, st, self._leave_decode(rid, st), now))
        for rid, chunk, done in plan.chunks:
            st = reqs[rid]
            st.computed_tokens += chunk
            outcome = self._complete_chunk(rid, st, done + chunk, now)
            if outcome is not None:
                finished.append(outcome)
        return finished

    def _complete_chunk(self, rid: int, st: RequestState, computed: int,
                        now: float) -> Outcome | None:
        """Record a computed chunk; return the outcome if the request finished."""
        self._publish(st, computed)
        seq = st.seq
        if computed < seq:
            st.computed = computed
            return None
        if self.partial == rid:
            self.partial = None
        table = self.table
        generated = seq - table.prompt_tokens[rid] + 1
        st.seq = seq + 1
        if generated == 1:
            st.first_token_s = now
            self.first_tokens.append(rid)
        elif st.preempted_s is not None:
            self.preemption_gaps.append((now, now - st.preempted_s))
            st.preempted_s = None
        st.computed = None
        if generated == table.output_tokens[rid]:
            return self._finish(rid, st, seq, now, st.held)
        if self.prefill_only:
            return self._hand_off(rid, st, seq, now, st.held)
        self._join_decode(rid, st, seq)
        return None

    #: a prefill node of a disaggregated cluster: a request leaves at its first token
    prefill_only = False

    # -- decode phase -----------------------------------------------------------------------

    def _join_decode(self, rid: int, st: RequestState, kv_tokens: int) -> None:
        # the request holds blocks_for(kv_tokens) blocks (check_invariants verifies it)
        st.decode_kv_tokens = kv_tokens
        table = self.table
        generated = kv_tokens - table.prompt_tokens[rid] + 1
        self._dec.join(rid, kv_tokens, self.it, table.output_tokens[rid] - generated)

    def _leave_decode(self, rid: int, st: RequestState) -> int:
        """Remove a request from the decode set; return its KV token count."""
        kv_tokens = self._dec.leave(rid, self.it)
        st.seq = kv_tokens + 1
        st.computed_tokens += kv_tokens - st.decode_kv_tokens  # one token per iteration
        return kv_tokens

    # -- preemption -------------------------------------------------------------------------

    def _preempt(self, rid: int, now: float) -> None:
        """Free a running request's blocks and put it back at the head of the queue."""
        st = self.reqs[rid]
        if rid == self.partial:
            self.partial = None
            kv_tokens = st.computed
            assert kv_tokens is not None
            st.computed = None
            self._release(rid, st, kv_tokens, st.held, preempted=True)
        else:
            kv_tokens = self._leave_decode(rid, st)
            self._release(rid, st, kv_tokens, preempted=True)
            st.preempted_s = now
            if self.decode_clock_stalls:
                self._dec.drop_finish_entry(rid)
        del self.running[rid]
        self.waiting.appendleft(rid)
        self.admit_window += 1  # back at the head of the queue
        self.waiting_tokens += st.seq
        st.preemptions += 1
        self.preemptions += 1

    # -- leaving ----------------------------------------------------------------------------

    def _finish(self, rid: int, st: RequestState, kv_tokens: int, now: float,
                held: int | None = None) -> Outcome:
        """The last token is out: free the request's blocks and return its outcome."""
        self._release(rid, st, kv_tokens, held)
        del self.running[rid]
        arrival = self.table.arrival_s[rid]
        if self.recent_e2e_s != self.recent_e2e_s:  # NaN: first completion
            self.recent_e2e_s = now - arrival
            self.recent_ttft_s = st.first_token_s - arrival
        else:
            self.recent_e2e_s += 0.1 * (now - arrival - self.recent_e2e_s)
            self.recent_ttft_s += 0.1 * (st.first_token_s - arrival - self.recent_ttft_s)
        return self._outcome(rid, st, COMPLETED, now, self.table.output_tokens[rid])

    def _hand_off(self, rid: int, st: RequestState, kv_tokens: int, now: float,
                  held: int) -> Outcome:
        """The first token is out: the request leaves this prefill node (its blocks freed,
        shareable ones staying cached) with status COMPLETED and one token generated; the
        cluster moves its KV to a decode node."""
        self._release(rid, st, kv_tokens, held)
        del self.running[rid]
        ttft = st.first_token_s - self.table.arrival_s[rid]
        if self.recent_ttft_s != self.recent_ttft_s:  # NaN: first hand-off
            self.recent_ttft_s = ttft
        else:
            self.recent_ttft_s += 0.1 * (ttft - self.recent_ttft_s)
        return self._outcome(rid, st, COMPLETED, now, 1)

    def _outcome(self, rid: int, st: RequestState, status: int, finish_s: float,
                 generated: int, waiting: bool = False) -> Outcome:
        del self.reqs[rid]
        self.on_leave(rid, waiting)
        return Outcome(rid, self.node_id, status, st.first_scheduled_s, st.first_token_s,
                       finish_s, generated, st.cached_tokens, st.recomputed_tokens,
                       st.preemptions, st.computed_tokens)

    def cancel(self, rid: int, now: float) -> Outcome | None:
        """Withdraw a request from this node (at an iteration boundary), freeing its blocks.

        Returns its outcome (status CANCELLED, with the work it cost), or None if it is not
        here any more.
        """
        st = self.reqs.get(rid)
        if st is None:
            return None
        generated = self.generated(rid)
        waiting = rid not in self.running
        if waiting:
            self.waiting.remove(rid)
            self.waiting_tokens -= st.seq
        else:
            if rid == self.partial:
                self.partial = None
                assert st.computed is not None
                self._release(rid, st, st.computed, st.held)
            else:
                self._release(rid, st, self._leave_decode(rid, st))
                if self.decode_clock_stalls:
                    self._dec.drop_finish_entry(rid)
            del self.running[rid]
        return self._outcome(rid, st, CANCELLED, now, generated, waiting)

    def take_waiting(self, rid: int) -> bool:
        """Remove a request that is queued here and has never started (for rebalancing)."""
        st = self.reqs.get(rid)
        if st is None or st.first_scheduled_s == st.first_scheduled_s or rid in self.running:
            return False
        self.waiting.remove(rid)
        self.waiting_tokens -= st.seq
        del self.reqs[rid]
        self.on_leave(rid, True)
        return True

    # -- observation ------------------------------------------------------------------------

    def holds(self, rid: int) -> bool:
        """Whether the request is on this node (queued or running)."""
        return rid in self.reqs

    def in_flight(self, now: float) -> list[Outcome]:
        """Snapshots of the requests still here (status UNFINISHED), for the end of a run."""
        out = []
        dec, reqs = self._dec, self.reqs
        for rid in [*self.waiting, *self.running]:
            st = reqs[rid]
            done = st.computed_tokens + (dec.kv_tokens(rid, self.it) - st.decode_kv_tokens
                                         if rid in dec else 0)
            out.append(Outcome(rid, self.node_id, UNFINISHED, st.first_scheduled_s,
                               st.first_token_s, math.nan, self.generated(rid),
                               st.cached_tokens, st.recomputed_tokens, st.preemptions, done))
        return out

    def generated(self, rid: int) -> int:
        """Tokens generated so far by a request on this node."""
        if rid in self._dec:
            return self._dec.kv_tokens(rid, self.it) - self.table.prompt_tokens[rid] + 1
        return self.reqs[rid].seq - self.table.prompt_tokens[rid]
