"""Ctrl-C of a `--jobs 2` run stops its workers and removes its scratch folder (bench/run/parallel.py).

`CellPool.__exit__` waited for the cells its workers were training (`shutdown(wait=True)`: minutes
to hours of a token cell). Since SIGINT's KeyboardInterrupt is repeated every `RETRY_S` seconds
(bench/run/interrupt.py), the repeat landed in that wait and skipped the rest of `__exit__`: the
scratch folder with the dataset's prepared tensors (a full pickle, gigabytes on the standard suite)
stayed in the temporary folder, and in-process callers' workers trained on. The workers' own
unwinding (a terminal's Ctrl-C and `timeout -s INT` signal them too) must not be cut by a second
SIGINT from the parent: that interrupted the `interrupted` mark of a trial, which then counted as spent.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from fusebench.run import interrupt
from fusebench.run.parallel import CellPool

pytestmark = pytest.mark.usefixtures("sigint_as_in_a_terminal")


def test_an_interrupted_pool_stops_its_workers_and_removes_its_scratch():
    pool = CellPool(jobs=2, threads=1)
    pool._pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))
    pool._scratch = Path(tempfile.mkdtemp(prefix="fusebench-prepared-test-"))
    (pool._scratch / "data.pt").write_bytes(b"prepared")
    running = [pool._pool.submit(time.sleep, 120) for _ in range(2)]
    pool._futures = running
    while not all(f.running() for f in running):
        time.sleep(0.05)
    workers = list(pool._pool._processes.values())
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), interrupt.handling(retry_s=0.5):
        with pool:
            raise KeyboardInterrupt  # Ctrl-C while the workers train their cells
    assert not pool._scratch.exists()
    for proc in workers:
        proc.join(timeout=10)
        assert not proc.is_alive()
    assert time.monotonic() - t0 < 20


def _unwinding(marker: str) -> None:
    """A cell whose KeyboardInterrupt takes a second to unwind (marking its trial, saving its clock)."""
    Path(marker + ".started").write_text("")
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        time.sleep(1.0)
        Path(marker).write_text("unwound")
        raise


@pytest.mark.slow
def test_workers_that_the_ctrl_c_reached_too_unwind_without_a_second_sigint(tmp_path):
    pool = CellPool(jobs=2, threads=1)
    pool._pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))
    markers = [tmp_path / f"w{k}" for k in range(2)]
    pool._futures = [pool._pool.submit(_unwinding, str(m)) for m in markers]
    deadline = time.monotonic() + 120
    while not all(Path(f"{m}.started").exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the workers are inside their sleep
    for proc in list(pool._pool._processes.values()):
        os.kill(proc.pid, signal.SIGINT)  # the process group's Ctrl-C
    with pytest.raises(KeyboardInterrupt), interrupt.handling(retry_s=4.0):
        with pool:
            raise KeyboardInterrupt  # the parent's own
    assert all(m.exists() for m in markers)
