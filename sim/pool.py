"""Several simulations at once, one per worker process (``simlb run --jobs N``).

Runs are independent: each has its own seeded random streams and writes its own result
directory, so the results do not depend on how many run at a time (the same seed gives
byte-identical ``summary.json`` files with any ``--jobs``). Each worker regenerates its
replication's workload from the seed (cheap next to a simulation; a trace is read once per
worker task), simulates, writes the result directory atomically and sends the run's result
back. Progress updates travel through a queue to the parent's progress bars.

Memory: up to ``jobs`` simulations are in memory at once, each as large as a single run
(``docs/performance.md``), plus the results the parent collects (summaries only, from
``simlb run``).

Workers die with the parent. Each holds the read end of a pipe whose only write end is the
parent's, and a watchdog thread waits on it: when the parent ends in any way (SIGKILL
included) the pipe reports end-of-file and the worker exits at once, before it can write a
result directory (a half-written temporary folder is cleaned by the next write). With the
workers gone the fork server and the resource tracker, which live as long as their clients,
end too. SIGTERM to the parent unwinds it like Ctrl-C: the workers are stopped and their
unfinished results removed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from sim.build import ResolvedScenario
from sim.errors import SimulationError
from sim.runner import Progress, RunResult

#: the progress queue of this worker process (set by ``_start_worker``)
_queue: Any = None


def run_in_pool(resolved: ResolvedScenario, tasks: list[tuple[int, int]], out: Path,
                force: bool, progress: Callable[[str, int], Progress | None] | None,
                jobs: int, keep_records: bool = True) -> list[RunResult]:
    """Run ``(replication, strategy index)`` tasks on ``jobs`` worker processes; return
    their results in task order. The first failure cancels the runs not yet started and is
    raised here (the directories of runs that finished stay, each complete)."""
    try:
        scenario = pickle.dumps(resolved)  # once, not once per task
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise SimulationError(f"cannot send the scenario to worker processes ({exc}); "
                              f"run with --jobs 1") from None
    ctx = _context()
    queue = ctx.Queue()
    # the parent keeps the write end: workers see end-of-file on the read end when it dies
    lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
    # a run's progress bar appears with its first update, when a worker has started it
    labels = [(resolved.strategies[i].label, k) for k, i in tasks]
    relay = threading.Thread(target=_relay, args=(queue, labels, progress), daemon=True)
    relay.start()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                               initializer=_start_worker, initargs=(queue, lifeline_r))
    finished = False
    previous = _unwind_on_sigterm()
    try:
        futures: list[Future[RunResult]] = [
            pool.submit(_run_task, scenario, index, i, k, out, force, progress is not None,
                        keep_records)
            for index, (k, i) in enumerate(tasks)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in futures if f in done and f.exception() is not None]
        if failed:
            if isinstance(failed[0], BrokenProcessPool):
                raise SimulationError(f"a worker process ended abruptly (out of memory?); "
                                      f"try fewer --jobs than {jobs}") from None
            raise failed[0]
        results = [f.result() for f in futures]
        finished = True
        return results
    finally:
        if finished:
            pool.shutdown(wait=True)
            queue.put(None)
            relay.join(timeout=5)
        else:  # a failure or Ctrl-C: stop the runs still going (their directories never
            # appear: results are written atomically); the relay thread dies with us
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        lifeline_r.close()
        lifeline_w.close()


class ParentTerminated(SystemExit):
    """SIGTERM reached the parent while workers ran: unwind (stopping them) and exit 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    raise ParentTerminated


def _unwind_on_sigterm() -> Any:
    """Make SIGTERM unwind the parent (so ``run_in_pool`` stops its workers) instead of ending
    it on the spot; return the previous handler, or None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _context() -> multiprocessing.context.BaseContext:
    """A start method that is safe with the parent's threads (progress bars): a fork server
    that has imported simlb once where available, else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sim.app"])
        return ctx
    return multiprocessing.get_context("spawn")


class _Terminated(BaseException):
    """The parent stopped this worker (SIGTERM) in the middle of a run."""


_in_task = False


def _start_worker(queue: Any, lifeline: Any) -> None:
    global _queue
    _queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _on_terminate)
    threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True,
                     name="simlb-parent-watchdog").start()


def _watch_parent(lifeline: Any) -> None:
    """Exit this worker at once when the parent is gone (its pipe end closes)."""
    try:
        while True:
            lifeline.recv_bytes()  # nothing is ever sent; returns only by raising
    except (EOFError, OSError):
        pass
    os._exit(128 + signal.SIGTERM)


def _on_terminate(signum: int, frame: object) -> None:
    if _in_task:
        raise _Terminated  # unwinds the run, removing a half-written result directory
    os._exit(128 + signum)


def _run_task(scenario: bytes, index: int, choice_index: int, replication: int,
              out: Path, force: bool, report: bool, keep_records: bool) -> RunResult:
    global _in_task
    from sim.app import arrivals_progress, run_one

    resolved = pickle.loads(scenario)
    queue = _queue
    progress = None
    if report:
        def send(sim_s: float, horizon_s: float, dispatched: int) -> None:
            queue.put((index, sim_s, horizon_s, dispatched))
        progress = arrivals_progress(send, resolved.scenario.duration_s)
    _in_task = True
    try:
        result = run_one(resolved, choice_index, replication, out, force, progress,
                         keep_records)
        if report:
            queue.put((index, None, None, None))  # finished: the bar fills, its clock stops
        return result
    except _Terminated:
        os._exit(128 + signal.SIGTERM)
    finally:
        _in_task = False


def _relay(queue: Any, labels: list[tuple[str, int]],
           progress: Callable[[str, int], Progress | None] | None) -> None:
    """Pass the workers' progress messages to per-run callbacks (made by ``progress`` at a
    run's first message) until ``None``; a message without a time says the run finished."""
    from sim.app import finish_progress

    callbacks: dict[int, Progress | None] = {}
    while True:
        message = queue.get()
        if message is None:
            return
        index, sim_s, horizon_s, dispatched = message
        if index not in callbacks:
            callbacks[index] = progress(*labels[index]) if progress else None
        callback = callbacks[index]
        if callback is None:
            continue
        if sim_s is None:
            finish_progress(callback)
        else:
            callback(sim_s, horizon_s, dispatched)
