"""MAML per task (``"loop"``) against MAML batched over tasks (``"vmap"``), and ANIL beside both.

Which layout should ``MAML(layout="auto")`` pick on this device, and what are the two ratios the notebook reports:
"ANIL vs MAML, both batched" (the algorithm's cost) and "ANIL vs per-task MAML" (what users of the usual MAML code
get)? Times one meta-training step (median of ``--repeats`` after ``--warmup``) of conv4 5-way 1-shot 5-query
tasks, first and second order, with :func:`benchmarks.methods.time_steps`. ``--check`` first compares the two
layouts' loss and gradients in float64 on the device. MAML: Finn et al., ICML 2017; ANIL: Raghu et al., ICLR 2020,
arXiv:1909.09157. Run from the repository root::

    .venv/bin/python -m benchmarks.maml_layouts --sizes 28 --repeats 3     # CPU, about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from algorithms.anil import ANIL
from algorithms.maml import MAML
from benchmarks.methods import time_steps
from benchmarks.run import machine_description, make_tasks
from utils.io import atomic_write_text
from utils.networks import create_anil_network


def build(method: str, layout: str, first_order: bool, size: int, steps: int, device: torch.device,
          dtype: torch.dtype = torch.float32) -> ANIL | MAML:
    """A freshly initialised conv4 learner (same weights for every method and layout)."""
    torch.manual_seed(0)
    body, head = create_anil_network(5, image_size=size)
    body, head = body.to(device, dtype), head.to(device, dtype)
    if method == "anil":
        return ANIL(body, head, inner_lr=0.1, inner_steps=steps, first_order=first_order)
    return MAML(body, head, inner_lr=0.1, inner_steps=steps, first_order=first_order, layout=layout)


def gradient_check(device: torch.device, size: int = 28) -> float:
    """Largest relative difference of loss and gradients between the layouts, float64, 4 tasks, both orders.

    Conv biases feed a BatchNorm that cancels them, so their exact gradient is 0 and only rounding noise is
    left; tensors whose reference is below 1e-10 are compared in absolute terms (the largest difference is
    then reported if it exceeds the relative ones).
    """
    tasks = [t.to(torch.float64) if t.is_floating_point() else t for t in make_tasks(4, size, device)]
    worst = 0.0
    for first_order in (True, False):
        grads = {}
        for layout in ("loop", "vmap"):
            maml = build("maml", layout, first_order, size, 2, device, torch.float64)
            loss, _ = maml.meta_loss(tasks)
            loss.backward()
            grads[layout] = [loss.detach(), *(p.grad for p in maml.model.parameters())]
        for a, b in zip(grads["loop"], grads["vmap"], strict=True):
            scale = a.abs().max().item()
            worst = max(worst, (a - b).abs().max().item() / (scale if scale > 1e-10 else 1.0))
    return worst


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[28])
    p.add_argument("--meta-batch-size", type=int, default=16)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--check", action="store_true", help="compare loop and vmap gradients in float64 first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    if args.check:
        print(f"float64 max relative difference loop vs vmap (loss, every gradient): {gradient_check(device):.1e}")
    rows = []
    for size in args.sizes:
        tasks = make_tasks(args.meta_batch_size, size, device)
        for first_order in (True, False):
            for method, layout in (("anil", "auto"), ("maml", "loop"), ("maml", "vmap")):
                learner = build(method, layout, first_order, size, args.inner_steps, device)
                ms = 1e3 * time_steps(learner, tasks, args.repeats, args.warmup)
                rows.append({"size": size, "order": "first" if first_order else "second", "method": method,
                             "layout": getattr(learner, "layout", layout), "ms_per_step": ms})
                print(f"{size:>4}px {rows[-1]['order']:<6} {method} {rows[-1]['layout']:<5} {ms:9.1f} ms/step",
                      flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["size", "order"], columns=["method", "layout"], values="ms_per_step")
    wide.columns = [f"{m}_{lay}_ms" for m, lay in wide.columns]
    anil = wide.filter(like="anil_").iloc[:, 0]
    wide["maml vmap/loop"] = wide["maml_vmap_ms"] / wide["maml_loop_ms"]
    wide["MAML batched / ANIL"] = wide["maml_vmap_ms"] / anil
    wide["MAML per task / ANIL"] = wide["maml_loop_ms"] / anil
    print(f"\n{machine_description(args.device)} | {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} | "
          f"meta-batch {args.meta_batch_size}, {args.inner_steps} inner steps, median of {args.repeats}")
    print(wide.to_string(float_format=lambda v: f"{v:.2f}"))
    atomic_write_text(args.out / "maml_layouts.csv", wide.reset_index().to_csv(index=False))
    return wide


if __name__ == "__main__":
    main()
