"""Where tasks run: in this process, in local worker processes, or on a Ray cluster.

Every executor runs the same function (``sim.sweep.tasks.run_task``) on the same pickled
scenarios and the results are JSON-normalised records, so a sweep's table is byte-identical
whichever executor ran it (a test checks local against Ray). ``run_tasks`` adds what all share:
cached tasks are not run, each result is cached the moment it arrives, a task that fails is
retried up to ``retries`` times (a worker that died takes its running tasks with it; they are
retried too), and tasks that still fail are returned as ``Failure`` records, never dropped.
Input errors (a bad trace record) fail at once: they would fail again.

Local workers are started by a fork server that imported simlb once, and die with the parent
(a watchdog thread in each waits on a pipe whose write end only the parent holds), so killing
a sweep leaves no orphan simulations behind; the records they had returned are kept.

Ray: ``address=None`` starts a private local Ray instance with ``jobs`` CPUs and stops it at
the end; ``auto`` or ``ray://host:10001`` joins a running cluster (whose workers must have the
same simlb installed, and reach the scenario's trace files at the same paths if it has any).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from sim.errors import InputError
from sim.sweep import SweepError
from sim.sweep.cache import TaskCache
from sim.sweep.tasks import Task, run_task

EXECUTORS = ("local", "ray")
#: (task, record or exception) as each task ends
Outcome = tuple[Task, dict[str, Any] | BaseException]


@dataclass(frozen=True)
class Failure:
    """A task that failed every attempt: what ran, how often, the last error."""

    task: Task
    attempts: int
    error: str


class Backend(Protocol):
    """Runs tasks, yielding each one's outcome as it ends (any order)."""

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """Run ``tasks``; yield ``(task, record)`` or ``(task, exception)`` for each."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


class InProcess:
    """Run tasks one after another in this process (``--jobs 1``)."""

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """See ``Backend``."""
        for task in tasks:
            try:
                yield task, run_task(task.payload, task.choice, task.replication)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                yield task, exc

    def close(self) -> None:
        """Nothing to release."""


class LocalProcesses:
    """``jobs`` worker processes on this machine; a broken pool is replaced."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        ctx = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
            else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["sim.sweep.tasks", "sim.app"])
        self._ctx = ctx
        self._lifeline_r, self._lifeline_w = ctx.Pipe(duplex=False)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=self._ctx,
                                             initializer=_start_worker,
                                             initargs=(self._lifeline_r,))
        return self._pool

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """See ``Backend``."""
        pool = self._executor()
        futures: dict[Future[dict[str, Any]], Task] = {
            pool.submit(run_task, t.payload, t.choice, t.replication): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if isinstance(exc, BrokenProcessPool):
                    self._discard()
                yield futures[future], exc if exc is not None else future.result()

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Stop the workers (those still running are terminated)."""
        if self._pool is not None:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=5)
            self._pool = None
        self._lifeline_r.close()
        self._lifeline_w.close()


def _start_worker(lifeline: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
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


class RayCluster:
    """Tasks as Ray remote functions; each point's scenario is put in the object store once."""

    def __init__(self, jobs: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise SweepError("Ray is not installed; expected pip install 'simlb[distributed]' "
                             "(or --executor local)", field="--executor ray") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None:
                kwargs["num_cpus"] = jobs
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise SweepError(f"cannot reach a Ray cluster at {address!r} ({exc})",
                                 field="--address") from None
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        self._refs: dict[int, Any] = {}

    def _payload(self, task: Task) -> Any:
        ref = self._refs.get(id(task.payload))
        if ref is None:
            ref = self._refs[id(task.payload)] = (self._ray.put(task.payload), task.payload)
        return ref[0]

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        """See ``Backend``."""
        ray = self._ray
        refs = {self._remote.remote(self._payload(t), t.choice, t.replication): t
                for t in tasks}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield refs[ref], ray.get(ref)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    yield refs[ref], exc

    def close(self) -> None:
        """Forget the stored scenarios; stop Ray if this process started it."""
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def open_backend(executor: str, jobs: int, address: str | None = None) -> Backend:
    """The backend for ``--executor`` with ``jobs`` workers (``address``: Ray only).

    Raises:
        SweepError: an unknown executor, ``--address`` without Ray, Ray missing.
    """
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; expected one of "
                         f"{', '.join(EXECUTORS)}", field="--executor")
    if executor == "ray":
        return RayCluster(jobs, address)
    if address is not None:
        raise SweepError("--address is for --executor ray", field="--address")
    return LocalProcesses(jobs) if jobs > 1 else InProcess()


def _cause(exc: BaseException) -> BaseException:
    """The task's own exception (Ray wraps it)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _describe(exc: BaseException) -> str:
    exc = _cause(exc)
    if isinstance(exc, BrokenProcessPool):
        return "a worker process ended abruptly (out of memory, or killed)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_tasks(backend: Backend, tasks: Sequence[Task], cache: TaskCache, *,
              retries: int = 2, done: Callable[[Task, bool], None] | None = None,
              ) -> tuple[dict[str, dict[str, Any]], list[Failure]]:
    """Run the tasks not in ``cache``; return the records by task key and the failures.

    ``done(task, cached)`` is called once per distinct task as it ends (cached ones first).
    When a local worker dies, every task then in the pool fails with it and the one that
    killed it cannot be told: those tasks are run again one at a time, uncounted, so that a
    task crashing its worker uses up only its own retries.
    """
    records: dict[str, dict[str, Any]] = {}
    todo: dict[str, Task] = {}
    for task in tasks:
        if task.key in records or task.key in todo:
            continue
        record = cache.get(task.key)
        if record is None:
            todo[task.key] = task
            continue
        records[task.key] = record
        if done:
            done(task, True)
    attempts = dict.fromkeys(todo, 0)
    alone: set[str] = set()  # tasks to run one at a time (they shared a pool that broke)
    failures: list[Failure] = []
    while todo:
        together = [t for t in todo.values() if t.key not in alone]
        groups = ([together] if together else []) + [[t] for t in todo.values()
                                                     if t.key in alone]
        todo = {}
        for group in groups:
            for task, outcome in backend.run(group):
                if len(group) > 1 and isinstance(outcome, BaseException) \
                        and isinstance(_cause(outcome), BrokenProcessPool):
                    alone.add(task.key)  # maybe not its fault: retry alone, uncounted
                    todo[task.key] = task
                    continue
                attempts[task.key] += 1
                if isinstance(outcome, dict):
                    cache.put(task.key, outcome, {"point": task.point, "strategy": task.label,
                                                  "replication": task.replication})
                    records[task.key] = outcome
                elif attempts[task.key] <= retries and \
                        not isinstance(_cause(outcome), InputError):  # retry it
                    todo[task.key] = task
                    continue
                else:
                    failures.append(Failure(task, attempts[task.key], _describe(outcome)))
                if done:
                    done(task, False)
    return records, failures
