"""Benchmark suite: how close does ANIL's meta-iteration come to a plain supervised pass over the same images?

ANIL (Raghu et al., ICLR 2020, arXiv:1909.09157) adapts only a linear head, so one meta-iteration should cost barely
more than one supervised forward+backward+Adam pass over its images: that pass is *the floor* (b). For each
scenario (S1-S4) and image size this script times, as the median of repeated runs after a warm-up:

(a) ``ANIL.meta_train_step`` (and, with ``--anil-layouts``, with each feature layout forced; with ``--cuda-graph
on off``, replayed from a CUDA graph and eager; with ``--anil-levers``, the grouped layout with channels_last or
``torch.compile``, or with autograd's BatchNorm formula instead of ``GroupedNorm``); (b) the floor,
searching chunk sizes {5, 30, all} and memory formats {contiguous, channels_last} and keeping the fastest; (c) a
plain per-task ANIL loop; (d) the seed's pseudocode, which re-runs the body at every inner step; (e) MAML, first
and second order, in both forms: one task at a time (``maml_fo``, ``maml_so``: the ``"loop"`` layout, what the usual
MAML code does) and batched over tasks with ``torch.func`` (``maml_fo_vmap``, ``maml_so_vmap``); (f) the peak memory
of each.

Every measurement runs in a fresh subprocess, so that its peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on a CPU the growth of the process's peak resident set (``ru_maxrss``) over
what the network and the tasks already occupy. Run from the repository root::

    .venv/bin/python -m benchmarks.run                 # full suite (about 20-30 min on a 2-core CPU)
    .venv/bin/python -m benchmarks.run --tiny          # CI: seconds, no timing claims
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from algorithms.features import LAYOUTS
from benchmarks import methods
from utils.io import atomic_write_json, atomic_write_text
from utils.networks import create_anil_network, create_pretrained_resnet_body, freeze_body
from utils.tasks import TaskBatch

SCENARIOS = {  # name: (architecture, first_order, frozen body)
    "S1": ("conv4", False, False),
    "S2": ("conv4", True, False),
    "S3": ("resnet18", True, False),
    "S4": ("resnet18", True, True),
}
TARGETS = {"S1": 1.35, "S2": 1.25, "S3": 1.35}
FLOOR_CHUNKS = (5, 30, None)  # None: all images in one batch
# Options for the 105x105 gap, each timed on the grouped layout (whose BatchNorm is GroupedNorm unless autograd_bn).
LEVERS = {"channels_last": {"channels_last": True}, "compile": {"compile_body": True},
          "autograd_bn": {"fused_bn": False}}


@dataclass(frozen=True)
class Job:
    """One measurement: a method on a scenario at an image size."""

    scenario: str
    size: int
    method: str  # anil | floor | per_task | seed | maml_fo | maml_so | maml_fo_vmap | maml_so_vmap
    meta_batch_size: int
    repeats: int
    warmup: int
    inner_steps: int = 5
    chunk: int | None = None
    channels_last: bool = False
    layout: str = "auto"  # ANIL's feature layout (algorithms.features)
    cuda_graph: bool = False  # ANIL and MAML: capture the step in a CUDA graph (strict: a failed capture fails the job)
    compile_body: bool = False  # ANIL: torch.compile the grouped body
    fused_bn: bool = True  # ANIL: the grouped layout's BatchNorm through GroupedNorm (False: autograd's formula)


def make_tasks(meta_batch_size: int, size: int, device: torch.device) -> TaskBatch:
    """Random 5-way 1-shot 5-query tasks (timing does not depend on pixel values)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randperm(5, generator=g) for _ in range(meta_batch_size)])
    batch = TaskBatch(
        torch.rand(meta_batch_size, 5, 1, size, size, generator=g),
        labels,
        torch.rand(meta_batch_size, 25, 1, size, size, generator=g),
        labels.repeat_interleave(5, dim=1),
    )
    return TaskBatch(*(t.to(device) for t in batch))


def build_step(job: Job, device: torch.device) -> methods.Step:
    """The zero-argument step function that ``job`` times."""
    arch, first_order, frozen = SCENARIOS[job.scenario]
    torch.manual_seed(0)
    body, head = (
        create_anil_network(5, image_size=job.size) if arch == "conv4" else create_pretrained_resnet_body(5, None)
    )
    body, head = body.to(device), head.to(device)
    tasks = make_tasks(job.meta_batch_size, job.size, device)
    if frozen:
        freeze_body(body)
    if job.method == "anil":
        return methods.anil_step(body, head, tasks, first_order, frozen, job.inner_steps, job.layout,
                                 cuda_graph=job.cuda_graph, channels_last=job.channels_last,
                                 compile_body=job.compile_body, fused_bn=job.fused_bn)
    if job.method == "floor":
        chunk = job.chunk or job.meta_batch_size * 30
        return methods.floor_step(body, head, tasks, chunk, job.channels_last)
    if job.method in ("per_task", "seed"):
        return methods.per_task_step(body, head, tasks, first_order, job.inner_steps, job.method == "seed")
    layout = "vmap" if job.method.endswith("_vmap") else "loop"
    return methods.maml_step(body, head, tasks, job.method.startswith("maml_fo"), job.inner_steps, layout,
                             job.cuda_graph)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(job: Job, device: torch.device) -> dict:
    """Median milliseconds and peak memory (MB) of ``job``, in this process."""
    step = build_step(job, device)
    # Baseline before the first step: the network and the tasks are already allocated, nothing else is.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(job.warmup):
        step()
    _sync(device)
    times = []
    for _ in range(job.repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"ms": statistics.median(times), "peak_mb": peak}


def run_in_subprocess(job: Job, device: str, in_process: bool = False) -> dict:
    """Run ``job`` in a fresh interpreter so that its peak memory is not inherited from earlier jobs.

    ``in_process`` skips the fresh interpreter (fast, for ``--tiny``); peak memory is then only indicative.
    """
    if in_process:
        return measure(job, torch.device(device))
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", json.dumps(asdict(job)), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Benchmark job {job} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


_FLOORS: dict[tuple, dict] = {}


def floor_search(base: Job, device: str, chunks: tuple, in_process: bool) -> dict:
    """Fastest floor over chunk sizes and memory formats; records the winner's setting.

    The floor depends only on the body, whether it is frozen, and the images, so S1 and S2 share theirs.
    """
    arch, _, frozen = SCENARIOS[base.scenario]
    key = (arch, frozen, base.size, base.meta_batch_size)
    if key in _FLOORS:
        print(f"    floor: same body and images as before, {_FLOORS[key]['setting']}", flush=True)
        return _FLOORS[key]
    results = []
    for chunk in chunks:
        for channels_last in (False, True):
            job = Job(**{**asdict(base), "method": "floor", "chunk": chunk, "channels_last": channels_last})
            result = run_in_subprocess(job, device, in_process)
            layout = "channels_last" if channels_last else "contiguous"
            results.append({**result, "setting": f"chunk {chunk or 'all'}, {layout}"})
            print(f"    floor {results[-1]['setting']:<26} {result['ms']:9.1f} ms", flush=True)
    _FLOORS[key] = min(results, key=lambda r: r["ms"])
    return _FLOORS[key]


def scenario_row(scenario: str, size: int, args: argparse.Namespace) -> dict:
    """All methods for one scenario and size, as one table row."""
    base = Job(scenario, size, "anil", args.meta_batch_size, args.repeats, args.warmup,
               cuda_graph=args.cuda_graph[0] == "on")
    print(f"{scenario} at {size}x{size}:", flush=True)
    floor = floor_search(base, args.device, args.floor_chunks, args.in_process)
    row = {"scenario": scenario, "size": size, "floor_ms": floor["ms"], "floor_setting": floor["setting"],
           "floor_peak_mb": floor["peak_mb"]}
    wanted = ["anil", *args.methods]
    if SCENARIOS[scenario][0] != "conv4" or (size > 28 and not args.maml_at_105):
        wanted = [m for m in wanted if not m.startswith("maml")]
    jobs = {method: Job(**{**asdict(base), "method": method}) for method in wanted}
    # Each layout of ANIL's features forced, beside "auto" (the device's default): which one should auto pick?
    jobs |= {f"anil_{layout}": Job(**{**asdict(base), "layout": layout}) for layout in args.anil_layouts}
    # The first --cuda-graph mode is anil_ms itself; every mode also gets its own column, so a/b can be compared.
    graph_modes = args.cuda_graph if len(args.cuda_graph) > 1 else []
    jobs |= {f"{method}_graph_{mode}": Job(**{**asdict(base), "method": method, "cuda_graph": mode == "on"})
             for method in wanted if method in ("anil", "maml_fo_vmap", "maml_so_vmap") for mode in graph_modes}
    jobs |= {f"anil_grouped_{lever}": Job(**{**asdict(base), "layout": "grouped", **LEVERS[lever]})
             for lever in args.anil_levers}
    for name, job in jobs.items():
        try:
            result = run_in_subprocess(job, args.device, args.in_process)
        except Exception as err:  # one failed variant (a capture, a compile) must not cost the other measurements
            print(f"    {name:<35} FAILED: {type(err).__name__}: {str(err).strip()[-300:]}", flush=True)
            result = {"ms": float("nan"), "peak_mb": float("nan")}
        row[f"{name}_ms"], row[f"{name}_peak_mb"] = result["ms"], result["peak_mb"]
        print(f"    {name:<35} {result['ms']:9.1f} ms  peak {result['peak_mb']:8.1f} MB", flush=True)
    return row


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """a/b, c/a, d/a and e/a columns, and whether each scenario's a/b target is met."""
    table["a/b"] = table["anil_ms"] / table["floor_ms"]
    for mode in ("on", "off"):
        if f"anil_graph_{mode}_ms" in table:
            table[f"a/b graph {mode}"] = table[f"anil_graph_{mode}_ms"] / table["floor_ms"]
    for method, label in (("per_task", "c/a"), ("seed", "d/a"), ("maml_fo", "e_fo/a"), ("maml_so", "e_so/a"),
                          ("maml_fo_vmap", "e_fo_vmap/a"), ("maml_so_vmap", "e_so_vmap/a")):
        if f"{method}_ms" in table:
            table[label] = table[f"{method}_ms"] / table["anil_ms"]
    s1 = table[table.scenario == "S1"].set_index("size")["anil_ms"]
    if "maml_so_ms" in table:
        table["e_so/a(S1)"] = table["maml_so_ms"] / table["size"].map(s1)
    table["target a/b"] = table["scenario"].map(TARGETS)
    table["a/b met"] = table["a/b"] <= table["target a/b"]
    s3 = table[table.scenario == "S3"].set_index("size")["anil_ms"]
    is_s4 = table.scenario == "S4"
    table.loc[is_s4, "a/b met"] = table.loc[is_s4, "anil_ms"] <= table.loc[is_s4, "size"].map(s3)
    return table


def machine_description(device: str) -> str:
    """A one-line description of the hardware the numbers come from."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 105])
    p.add_argument("--resnet-sizes", type=int, nargs="+", help="sizes for S3/S4 (default: --sizes)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--methods", nargs="*",
                   default=["per_task", "seed", "maml_fo", "maml_so", "maml_fo_vmap", "maml_so_vmap"],
                   help="maml_fo/maml_so: MAML one task at a time (loop); *_vmap: batched over tasks")
    p.add_argument("--anil-layouts", nargs="*", default=[], choices=[x for x in LAYOUTS if x != "auto"],
                   help="also time ANIL with each of these feature layouts forced (columns anil_<layout>_ms)")
    p.add_argument("--cuda-graph", nargs="+", default=["off"], choices=["on", "off"],
                   help="ANIL and MAML with their steps captured in a CUDA graph ('on', CUDA only) or eager; the "
                        "first mode is anil_ms (and the MAML columns), and with several each gets a column "
                        "anil_graph_<mode>_ms (maml_*_vmap_graph_<mode>_ms for batched MAML)")
    p.add_argument("--anil-levers", nargs="*", default=[], choices=list(LEVERS),
                   help="also time the grouped layout with channels_last, torch.compile or autograd's BatchNorm "
                        "formula (anil_grouped_<lever>_ms)")
    p.add_argument("--meta-batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--maml-at-105", action="store_true", help="also time MAML at sizes above 28 (slow on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--tiny", action="store_true", help="CI mode: tiny sizes and counts; no timing claims")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (default on CUDA, where peak memory is per job anyway)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.floor_chunks = FLOOR_CHUNKS
    args.in_process = args.in_process or args.tiny or args.device.startswith("cuda")
    if "on" in args.cuda_graph and not args.device.startswith("cuda"):
        p.error("--cuda-graph on needs --device cuda (CUDA graphs exist only there)")
    if args.tiny:
        args.sizes, args.scenarios, args.meta_batch_size = [28], ["S1", "S2"], 2
        args.repeats, args.warmup, args.floor_chunks = 1, 1, (5,)
        args.anil_layouts = args.anil_layouts or ["grouped"]
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame | None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(Job(**json.loads(args.child)), torch.device(args.device))))
        return None
    rows = [scenario_row(s, size, args) for size in args.sizes for s in args.scenarios
            if SCENARIOS[s][0] == "conv4" or size in (args.resnet_sizes or args.sizes)]
    table = add_ratios(pd.DataFrame(rows))
    meta = {"machine": machine_description(args.device), "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
            "meta_batch_size": args.meta_batch_size, "repeats": args.repeats, "tiny": args.tiny,
            "torch": torch.__version__}
    name = "benchmark_tiny" if args.tiny else "benchmark"
    atomic_write_text(args.out / f"{name}.csv", table.to_csv(index=False))
    atomic_write_json(args.out / f"{name}.json", {"meta": meta, "rows": table.to_dict(orient="records")})
    layouts = (f"anil_{x}_ms" for x in args.anil_layouts)
    graphed = [f"{method}_graph_{m}_ms" for method in ("anil", "maml_fo_vmap", "maml_so_vmap") for m in args.cuda_graph]
    variants = graphed + [f"anil_grouped_{x}_ms" for x in args.anil_levers]
    columns = [c for c in ("scenario", "size", "anil_ms", *layouts, *variants, "a/b graph on", "a/b graph off",
                           "floor_ms", "floor_setting", "a/b", "target a/b", "a/b met", "c/a", "d/a", "e_fo/a",
                           "e_so/a", "e_fo_vmap/a", "e_so_vmap/a", "e_so/a(S1)") if c in table]
    print(f"\n{meta['machine']} | {meta['date']} | torch {meta['torch']}")
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return table


if __name__ == "__main__":
    main()
