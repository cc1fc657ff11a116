"""How many cell processes a run gets on each device (bench/run/parallel.py pool_jobs)."""

from __future__ import annotations

import torch

from fusebench.run.parallel import pool_jobs


def test_cells_share_a_cpu_or_a_cuda_gpu_and_run_one_at_a_time_elsewhere():
    assert pool_jobs(4, torch.device("cpu")) == 4
    assert pool_jobs(4, torch.device("cuda")) == 4  # was 1: a --jobs 8 GPU run trained one cell at a time
    assert pool_jobs(4, torch.device("mps")) == 1
    assert pool_jobs(1, torch.device("cuda")) == 1
