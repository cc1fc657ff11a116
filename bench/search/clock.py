"""The cap of one search replicate, counted over every process that searched it: wall seconds, or
CPU seconds on a CPU run (`CAP_CLOCKS`).

A search replicate is one optuna study. Every process that works on it — the owning run, the same
run resumed after a kill, a `fusebench worker` — keeps its *busy* seconds (inside its trial loop:
asking, training, telling; not the seconds it waits for other processes' trials) in a study user
attr of its own, `search_seconds:<host>:<pid>:<token>`. It writes it when it starts working, at each
trial's (or batched round's) end, every `SAVE_EVERY_S` seconds from a background thread while it
works, and when it stops (an exception included). The replicate's seconds are the sum of those attrs, so that:

- the cap (`Budget.timeout_s`) is on the replicate's total: a search resumed after a kill has only
  what the killed process left of it (before, each process got a fresh cap); with concurrent
  workers the cap is on their summed seconds — a compute budget, the same whatever the number of
  processes that share it;
- the record's `search_seconds` is that total (before: the last process's seconds only); a kill
  loses at most the killed process's last `SAVE_EVERY_S` seconds (its trial in flight still counts
  up to then, though that trial itself is retried).

One attr per process (not one shared counter) because processes write concurrently and a storage's
user attrs have no atomic add. A study searched before this count existed has trials but no such
attr: the first clock gives its earlier processes the seconds optuna's own records show
(`search_seconds:before`: the union of the finished trials' start-to-end intervals, trials failed
as stale left out — a lower bound: it misses a killed trial's seconds and the gaps between
trials), so the cap still counts them, and marks the study `search_seconds_partial`: its records
carry `search_seconds_complete: false`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna

log = logging.getLogger(__name__)

# What a replicate's cap counts (`Budget.cap_clock`). "wall": elapsed seconds inside the trial loop.
# "cpu": the process's CPU seconds there, divided by torch's intra-op thread count, so that a trial
# whose threads all run counts its wall seconds on a quiet machine. Frozen cells train on one thread;
# fine-tuning on a CPU keeps every core (bench/run/runner.py), and the undivided CPU seconds of its
# N threads spent a 1800 s cap in 1800/N s of a quiet machine's wall clock. A run on CPU counts
# CPU seconds: on a machine shared with other work, a neighbour slows a trial's wall clock, not the
# CPU seconds it needs. The standard run on the dev machine showed it: a round of 5 `coattention`
# trials on ESC-50 took ~400 s of wall clock while the machine was quiet and 1,580 s while tests ran
# beside it, so which replicates reached 20 trials within the 1800 s cap depended on the operator.
# GPU runs count wall seconds, because a GPU process's CPU seconds undercount the device's work.
def _wall() -> float:
    return time.perf_counter()


def _cpu() -> float:
    import torch

    return time.process_time() / max(1, torch.get_num_threads())


# looked up at each call (not bound at import), so that a test's stand-in for `time` reaches them
CAP_CLOCKS: dict[str, Callable[[], float]] = {"wall": _wall, "cpu": _cpu}

KEY_PREFIX = "search_seconds:"
PARTIAL_KEY = "search_seconds_partial"
BEFORE_KEY = KEY_PREFIX + "before"  # a study's seconds before they were kept (estimated from its trials)
SAVE_EVERY_S = 30.0
# the clocks (CAP_CLOCKS names) that counted a study's seconds, in the order they first did: a study
# searched under one clock and resumed under another (a wall-clock study of code before the CPU clock,
# resumed by a CPU run; a GPU run's study resumed on a CPU) sums seconds of both, and says so
CLOCKS_KEY = "search_clocks"


@dataclass(frozen=True)
class SearchTime:
    """The seconds every process spent on a replicate's search, and whether they are all counted."""

    seconds: float
    complete: bool  # False: the study was searched before the count existed (earlier seconds unknown)
    clock: str = ""  # what the seconds count: "wall", "cpu", or "wall+cpu" when both did ("": none yet)

    def record_fields(self) -> dict[str, Any]:
        return {"search_seconds": self.seconds, "search_seconds_complete": self.complete, "search_clock": self.clock}


def _saved(attrs: dict[str, Any], but: str | None = None) -> float:
    return sum(float(v) for k, v in attrs.items() if k.startswith(KEY_PREFIX) and k != but)


def trial_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Seconds during which at least one finished trial was running (the union of their start-to-end
    intervals), trials failed as stale left out: their end is when a later process marked them."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials
                   if t.datetime_start and t.datetime_complete and not t.user_attrs.get("stale"))
    total, end = 0.0, None
    for a, b in spans:
        if end is None or a > end:
            total += (b - a).total_seconds()
            end = b
        elif b > end:
            total += (b - end).total_seconds()
            end = b
    return total


def search_time(study: optuna.Study) -> SearchTime:
    """The replicate's search seconds as saved in its study (all processes, the finished ones exactly)."""
    attrs = study.user_attrs
    return SearchTime(_saved(attrs), not attrs.get(PARTIAL_KEY), "+".join(_clocks(attrs)))


def _clocks(attrs: dict[str, Any]) -> list[str]:
    """The clocks that counted the study's seconds; seconds saved before the clocks were kept were wall seconds."""
    if CLOCKS_KEY in attrs:
        return list(attrs[CLOCKS_KEY])
    return ["wall"] if any(k.startswith(KEY_PREFIX) for k in attrs) else []


class SearchClock:
    """This process's busy seconds on a study, saved into it, and the cap left over all processes.

    `with clock.ticking(): ... with clock.busy(): work()` — `left()` is the cap minus the seconds of
    every process (the others' as last saved, this one's up to now)."""

    def __init__(self, study: optuna.Study, timeout_s: float, save_every_s: float = SAVE_EVERY_S,
                 clock: str = "wall") -> None:
        self._study = study
        self._clock = clock  # a CAP_CLOCKS name: what this process's seconds count
        self._timer = CAP_CLOCKS[clock]
        self._timeout_s = timeout_s
        self._save_every_s = save_every_s
        self._key = f"{KEY_PREFIX}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._own = 0.0
        self._since: float | None = None
        self._registered = False
        attrs = study.user_attrs
        trials = study.get_trials(deepcopy=False)
        if not attrs.get(PARTIAL_KEY) and not any(k.startswith(KEY_PREFIX) for k in attrs) and trials:
            # searched by code that kept no seconds: what optuna's records show, and marked partial
            study.set_user_attr(BEFORE_KEY, round(trial_seconds(trials), 3))
            study.set_user_attr(PARTIAL_KEY, True)

    def own(self) -> float:
        """This process's busy seconds so far."""
        with self._lock:
            return self._own + (self._timer() - self._since if self._since is not None else 0.0)

    def spent(self) -> float:
        """The replicate's seconds: the other processes' as saved in the study, plus this one's now."""
        return _saved(self._study.user_attrs, but=self._key) + self.own()

    def left(self) -> float:
        return self._timeout_s - self.spent()

    def save(self) -> None:
        if self._registered:
            self._study.set_user_attr(self._key, round(self.own(), 3))

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the seconds of the block as this process's search seconds."""
        if not self._registered:
            clocks = _clocks(self._study.user_attrs)
            if self._clock not in clocks:  # before this process's first seconds are saved
                self._study.set_user_attr(CLOCKS_KEY, [*clocks, self._clock])
            self._registered = True
            self.save()
        with self._lock:
            self._since = self._timer()
        try:
            yield
        finally:
            with self._lock:
                assert self._since is not None
                self._own += self._timer() - self._since
                self._since = None

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Save this process's seconds every `save_every_s` from a daemon thread during the block, and
        once more at its end (optuna's storages are thread-safe: `optimize(n_jobs=...)` relies on it)."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(self._save_every_s):
                try:
                    self.save()
                except Exception as exc:  # a missed save costs at most one period; the final save retries
                    log.warning("study %s: could not save the search seconds: %s", self._study.study_name, exc)

        thread = threading.Thread(target=tick, name="fusebench-search-clock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.save()
