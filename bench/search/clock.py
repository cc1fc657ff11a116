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
- the record's `search_seconds` is that total (before: the last process's seconds only);
- the seconds of trials that a kill or a Ctrl-C threw away do not count: those trials are retried,
  and their retry counts its own seconds. Each process also saves its *committed* seconds
  (`search_seconds_committed:<key>`) when its trials have trained and are about to be told (a trial's
  objective returning, a batched round's training returning: committed before the tells, so that a kill
  or a Ctrl-C at a tell drops no told trial's seconds), and after; it registers with 0 s committed.
  A process interrupted by Ctrl-C or the time box
  drops its seconds since then itself;
  a killed one (SIGTERM, kill -9, a lost machine) leaves RUNNING trials, and the process that marks
  them stale sets the dead process's seconds back to its committed ones (`stale.fail_stale_running` on
  a file storage; on PostgreSQL the storage's heartbeat-stale callback, `storage.DropStaleSeconds`,
  whoever fails them: optuna's `optimize` does before each trial).
  Both keep what they dropped in `search_seconds_lost:<key>`, and the record says it
  (`search_seconds_lost`). A trial names its process by the clock key (`TRIAL_CLOCK_ATTR`), not by
  host and pid alone, which a restarted container reuses; a live process taken for dead (a stall past
  the heartbeat's grace) counts its seconds again at its next save or commit, which also clears its lost ones.
  Before, each kill at a session's end charged the cap with the 5 trials in
  flight per study, twice (killed and retried): on the standard CPU run a third of a replicate's cap.

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
from collections.abc import Callable, Collection, Iterable, Iterator
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
# a process's seconds when its trials were last told, and those it lost: neither starts with KEY_PREFIX
COMMITTED_PREFIX = "search_seconds_committed:"
LOST_PREFIX = "search_seconds_lost:"
# a trial's user attr: the key (`<host>:<pid>:<token>`) of the clock of the process that runs it (`trial_owners`)
TRIAL_CLOCK_ATTR = "search_clock_key"
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
    lost: float = 0.0  # seconds of trials that a kill or an interrupt threw away (retried): not in `seconds`

    def record_fields(self) -> dict[str, Any]:
        return {"search_seconds": self.seconds, "search_seconds_complete": self.complete, "search_clock": self.clock,
                "search_seconds_lost": self.lost}


def _saved(attrs: dict[str, Any], but: str | None = None, prefix: str = KEY_PREFIX) -> float:
    return sum(float(v) for k, v in attrs.items() if k.startswith(prefix) and k != but)


def trial_owners(trials: Iterable[optuna.trial.FrozenTrial]) -> set[str | tuple[str, int]]:
    """The processes that ran `trials`, as `drop_uncommitted` takes them: the clock key a trial carries
    (`TRIAL_CLOCK_ATTR`), else its (host, pid) (a trial of code before the key, or of a process killed
    between writing its host/pid and its key). By key where there is one, because a host name and a pid
    are reused: a container restarted under the same name numbers its processes alike, and a drop by
    (host, pid) also set back the seconds of a live process that shared them with the dead one."""
    owners: set[str | tuple[str, int]] = set()
    for t in trials:
        key, host, pid = t.user_attrs.get(TRIAL_CLOCK_ATTR), t.user_attrs.get("host"), t.user_attrs.get("pid")
        if key:
            owners.add(str(key))
        elif host is not None and pid is not None:
            owners.add((str(host), int(pid)))
    return owners


def drop_uncommitted(study: optuna.Study, dead: Collection[str | tuple[str, int]]) -> float:
    """Set each dead process's seconds back to its committed ones (what it had when its trials were last
    told): the seconds after that trained the trials it left RUNNING, which are retried and count again.
    `dead`: the processes whose trials were just marked stale (`trial_owners`). Returns the seconds dropped.
    Processes of code that kept no committed seconds keep all theirs (nothing says which were lost).

    The seconds attr is set back before the lost one is written: two processes that drop the same dead one
    at once then either both read its old attrs (and write the same values) or the second reads the seconds
    already set back (and skips it). In the other order a reader between the two writes added the lost
    seconds a second time."""
    attrs = study.user_attrs
    dropped = 0.0
    for key, value in attrs.items():
        if not key.startswith(KEY_PREFIX) or key == BEFORE_KEY:
            continue
        ident = key[len(KEY_PREFIX):]
        parts = ident.rsplit(":", 2)  # host:pid:token
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        proc = (parts[0], int(parts[1]))
        committed = attrs.get(COMMITTED_PREFIX + ident)
        if (ident not in dead and proc not in dead) or committed is None or float(value) == float(committed):
            continue
        if float(value) < float(committed):
            # killed between commit()'s two writes (or a periodic save raced it): its seconds attr is older than
            # its committed seconds, which are trained trials' (told, or about to be): they count
            study.set_user_attr(key, float(committed))
            continue
        lost = float(value) - float(committed)
        study.set_user_attr(key, float(committed))
        study.set_user_attr(LOST_PREFIX + ident, round(float(attrs.get(LOST_PREFIX + ident, 0.0)) + lost, 3))
        dropped += lost
        log.warning("study %s: %.0f s of the search of a killed process (host %s, pid %d) were spent on trials it left "
                    "running; they are retried, and those seconds no longer count against the cap",
                    study.study_name, lost, proc[0], proc[1])
    return dropped


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
    return SearchTime(_saved(attrs), not attrs.get(PARTIAL_KEY), "+".join(_clocks(attrs)),
                      round(_saved(attrs, prefix=LOST_PREFIX), 3))


def _clocks(attrs: dict[str, Any]) -> list[str]:
    """The clocks that counted the study's seconds; seconds saved before the clocks were kept were wall seconds."""
    if CLOCKS_KEY in attrs:
        return list(attrs[CLOCKS_KEY])
    return ["wall"] if any(k.startswith(KEY_PREFIX) for k in attrs) else []


class SearchClock:
    """This process's busy seconds on a study, saved into it, and the cap left over all processes.

    `with clock.ticking(): ... with clock.busy(): work()` — `left()` is the cap minus the seconds of
    every process (the others' as last saved, this one's up to now)."""

    def __init__(self, study: optuna.Study, timeout_s: float, save_every_s: float | None = None,
                 clock: str = "wall") -> None:
        self._study = study
        self._clock = clock  # a CAP_CLOCKS name: what this process's seconds count
        self._timer = CAP_CLOCKS[clock]
        self._timeout_s = timeout_s
        self._save_every_s = SAVE_EVERY_S if save_every_s is None else save_every_s  # read now: tests set it
        self._ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._key = KEY_PREFIX + self._ident
        self._lock = threading.Lock()
        self._own = 0.0
        self._committed = 0.0  # `_own` when this process's trials were last told
        self._lost = 0.0  # seconds of trials an interrupt threw away (retried)
        self._since: float | None = None
        self._registered = False
        attrs = study.user_attrs
        trials = study.get_trials(deepcopy=False)
        if not attrs.get(PARTIAL_KEY) and not any(k.startswith(KEY_PREFIX) for k in attrs) and trials:
            # searched by code that kept no seconds: what optuna's records show, and marked partial
            study.set_user_attr(BEFORE_KEY, round(trial_seconds(trials), 3))
            study.set_user_attr(PARTIAL_KEY, True)

    @property
    def key(self) -> str:
        """This process's clock key (`<host>:<pid>:<token>`): its trials carry it (`TRIAL_CLOCK_ATTR`)."""
        return self._ident

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
            self._clear_lost()

    def _clear_lost(self) -> None:
        """Called after this process wrote its seconds (a save or a commit): if it was taken for dead (on
        PostgreSQL: a stall longer than the heartbeat's grace), a dropper set its seconds back and kept the
        difference in its lost attr; the write just made counts those seconds again, so they are not lost.
        At a save too, not only at a commit: a process killed after such a save and before its next commit
        was dropped again from the saved seconds, and its lost attr kept the first drop's seconds twice."""
        lost_key = LOST_PREFIX + self._ident
        saved_lost = self._study.user_attrs.get(lost_key)
        if saved_lost is not None and float(saved_lost) != round(self._lost, 3):
            self._study.set_user_attr(lost_key, round(self._lost, 3))

    def commit(self) -> None:
        """The trials this process trained so far have been told: their seconds count even if it is killed
        later (saved before the seconds, so that a kill between the two writes drops nothing told)."""
        if not self._registered:
            return
        own = self.own()
        with self._lock:
            self._committed = own
        self._study.set_user_attr(COMMITTED_PREFIX + self._ident, round(own, 3))
        self._study.set_user_attr(self._key, round(own, 3))
        self._clear_lost()

    def discard(self, share: float = 1.0) -> None:
        """The trials in flight were thrown away, and are retried: an interrupt (marked `interrupted`), or
        another process that took this one for killed and failed them as stale (`stale.not_running`). Their
        seconds since the last commit do not count. Inside a `busy` block too: its seconds so far are
        folded in first, and the block goes on counting from now. `share` < 1: only that share of the
        trials in flight was thrown away (a batched round that another process took over in part, whose
        trials trained together): that share of the seconds goes, the rest stays to be committed."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        with self._lock:
            if self._since is not None:
                now = self._timer()
                self._own += now - self._since
                self._since = now
            lost = max(0.0, self._own - self._committed) * share
            self._own -= lost
            self._lost += lost
        if lost > 0:
            self._study.set_user_attr(LOST_PREFIX + self._ident, round(self._lost, 3))
            self.save()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the seconds of the block as this process's search seconds; the block tells every trial it
        starts before it returns, so its end commits them (`commit`)."""
        if not self._registered:
            clocks = _clocks(self._study.user_attrs)
            if self._clock not in clocks:  # before this process's first seconds are saved
                self._study.set_user_attr(CLOCKS_KEY, [*clocks, self._clock])
            self._registered = True
            # committed before its first seconds: a process killed before it tells its first trial has
            # committed nothing (0 s), not "kept no committed seconds" (code before them: keeps all)
            self._study.set_user_attr(COMMITTED_PREFIX + self._ident, round(self._committed, 3))
            self.save()
        with self._lock:
            self._since = self._timer()
        interrupted = False
        try:
            yield
        except KeyboardInterrupt:  # Ctrl-C or the time box: the trials in flight are retried
            interrupted = True
            raise
        finally:
            with self._lock:
                assert self._since is not None
                self._own += self._timer() - self._since
                self._since = None
            if interrupted:
                try:
                    self.discard()
                except Exception as exc:  # the interrupt goes on; a resumed search counts these seconds
                    log.warning("study %s: could not drop the interrupted trials' seconds: %s",
                                self._study.study_name, exc)
        self.commit()  # the block returned: every trial it started has been told

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
