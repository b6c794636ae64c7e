"""Profile one ANIL (S2) meta-iteration against the supervised floor at 105x105 with ``torch.profiler``.

Used to find where ANIL's time goes on a GPU (Raghu et al., ICLR 2020, arXiv:1909.09157). Run from the repository
root on a CUDA machine: ``PYTHONPATH=. python3 -m benchmarks.profile_gpu_step``.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.run import Job, build_step


def main() -> None:
    device = torch.device("cuda")
    for method in ("anil", "floor"):
        step = build_step(Job("S2", 105, method, 16, 5, 3, chunk=None, channels_last=True), device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"=== {method} S2 105x105, 5 steps")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
