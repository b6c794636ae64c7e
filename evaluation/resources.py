"""What a training run costs: peak memory, GPU utilisation and the name of the device it ran on.

The comparison of ANIL scenarios (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157) weighs accuracy against cost, so the
cost must be measured the same way for every scenario and never invented:

* **CUDA**: peak memory is ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's
  reserve), reset when the monitor starts; GPU utilisation is the mean of NVML's ``utilization.gpu`` samples
  (percentage of time a kernel ran, for the whole GPU, not only this process), or ``None`` when ``pynvml``
  (package ``nvidia-ml-py``) or the NVML driver library is missing.
* **CPU (and MPS)**: peak memory is the largest resident set size of the *whole process* sampled once per
  iteration (psutil), so it includes the data set, the other scenarios' models and Python itself; report it as
  "peak process RSS". There is no GPU utilisation.
"""

from __future__ import annotations

import platform
from pathlib import Path

import psutil
import torch

MEMORY_KIND_CUDA = "cuda_max_allocated"
MEMORY_KIND_RSS = "cpu_peak_rss"
MEMORY_KIND_LABELS = {MEMORY_KIND_CUDA: "CUDA max allocated", MEMORY_KIND_RSS: "peak process RSS"}
_MB = 2**20


def device_name(device: torch.device | str) -> str:
    """Human-readable device name, e.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu (2 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`, e.g. ``"AMD EPYC"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_isa() -> str:
    """The widest vector ISA torch uses on this CPU, and AMX where present: ``"AVX2"``, ``"AVX-512"``,
    ``"AVX-512+AMX"`` (bfloat16 is native only with AMX), ``"DEFAULT"`` elsewhere (e.g. Arm)."""
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    isa = {"AVX512": "AVX-512"}.get(capability, capability)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()  # private, but the only AMX probe
    return f"{isa}+AMX" if amx else isa


def machine_label(device: torch.device | str) -> str:
    """Where a run ran, for every printed figure: the GPU's name, or the CPU's model, ISA and threads.

    Examples: ``"NVIDIA H200"``, ``"AMD EPYC (AVX2), 2 threads"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({cpu_isa()}), {torch.get_num_threads()} threads"


def _nvml_handle(device: torch.device) -> object | None:
    """NVML handle of ``device``'s GPU, or ``None`` when NVML cannot be used."""
    try:
        import pynvml  # optional dependency (nvidia-ml-py), only useful on CUDA

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when the driver library is absent
        return None
    try:
        # CUDA_VISIBLE_DEVICES renumbers devices for torch but not for NVML: match by UUID when possible.
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception:
            return None


class ResourceMonitor:
    """Samples peak memory (and GPU utilisation on CUDA) once per training iteration.

    Args:
        device: the training device.
        state: a previous :meth:`state_dict`, to continue the statistics of a resumed run.
    """

    def __init__(self, device: torch.device | str, state: dict | None = None) -> None:
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.memory_kind = MEMORY_KIND_CUDA if self.is_cuda else MEMORY_KIND_RSS
        self._process = psutil.Process()
        self._peak_bytes, self._util_sum, self._util_count = 0, 0.0, 0
        if state is not None:
            self._peak_bytes = int(state["peak_bytes"])
            self._util_sum, self._util_count = float(state["util_sum"]), int(state["util_count"])
        self._nvml = _nvml_handle(self.device) if self.is_cuda else None
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def sample(self) -> None:
        """Record the current memory use (and GPU utilisation)."""
        if self.is_cuda:
            self._peak_bytes = max(self._peak_bytes, torch.cuda.max_memory_allocated(self.device))
        else:
            self._peak_bytes = max(self._peak_bytes, self._process.memory_info().rss)
        if self._nvml is not None:
            import pynvml  # already imported successfully by _nvml_handle

            self._util_sum += float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            self._util_count += 1

    @property
    def peak_memory_mb(self) -> float:
        """Peak memory in MiB (see the module docstring for what is measured)."""
        return self._peak_bytes / _MB

    @property
    def gpu_utilisation(self) -> float | None:
        """Mean GPU utilisation in percent, or ``None`` when it was not measured."""
        return self._util_sum / self._util_count if self._util_count else None

    def state_dict(self) -> dict:
        """Running statistics, stored in checkpoints so that a resumed run reports the whole run."""
        return {"peak_bytes": self._peak_bytes, "util_sum": self._util_sum, "util_count": self._util_count}
