"""What this machine is, what it can run, and its measured copy bandwidth (the roofline)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
from dataclasses import asdict, dataclass, field

import torch

# Set by a parent process so that worker processes share one bandwidth measurement.
BANDWIDTH_ENV = "NVFP4_BENCH_COPY_BW"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip().splitlines()
    return line[0].strip() if out.returncode == 0 and line else None


@dataclass
class Environment:
    """The fingerprint stored with every run; enough to tell two machines or stacks apart."""

    hostname: str
    platform: str
    cpu: str
    python: str
    torch: str
    torch_cuda: str | None
    triton: str | None
    flashinfer: str | None
    sglang: str | None
    cudnn: int | None
    driver: str | None
    gpu_name: str | None
    gpu_count: int
    compute_capability: tuple[int, int] | None
    sm_count: int | None
    memory_bytes: int | None
    l2_bytes: int | None
    copy_bandwidth_Bps: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.gpu_name else "cpu"

    @property
    def sm(self) -> int | None:
        """Compute capability as one number (90 for SM90, 120 for SM120)."""
        cc = self.compute_capability
        return cc[0] * 10 + cc[1] if cc else None

    def machine_name(self) -> str:
        """A stable name for histories: GPU model and capability, or the CPU architecture."""
        if self.gpu_name:
            base = re.sub(r"^nvidia\s+", "", self.gpu_name.lower())
            base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
            count = f"x{self.gpu_count}-" if self.gpu_count > 1 else ""
            return f"{base}-{count}sm{self.sm}"
        return f"cpu-{platform.machine().lower()}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        d["machine"] = self.machine_name()
        return d


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def detect(measure_bandwidth: bool = True) -> Environment:
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    env = Environment(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        cpu=_cpu_model(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        triton=_version("triton"),
        flashinfer=_version("flashinfer-python"),
        sglang=_version("sglang"),
        cudnn=torch.backends.cudnn.version() if cuda else None,
        driver=_driver_version() if cuda else None,
        gpu_name=props.name if props else None,
        gpu_count=torch.cuda.device_count() if cuda else 0,
        compute_capability=(props.major, props.minor) if props else None,
        sm_count=props.multi_processor_count if props else None,
        memory_bytes=props.total_memory if props else None,
        l2_bytes=getattr(props, "L2_cache_size", None) if props else None,
    )
    if measure_bandwidth:
        env.copy_bandwidth_Bps = copy_bandwidth()
    return env


@functools.lru_cache(maxsize=1)
def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written).

    Measured once per process, or taken from the parent process via NVFP4_BENCH_COPY_BW.
    """
    inherited = os.environ.get(BANDWIDTH_ENV)
    if inherited:
        return float(inherited)
    if torch.cuda.is_available():
        return _gpu_copy_bandwidth()
    return _cpu_copy_bandwidth()


def _gpu_copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / times[len(times) // 2]


def _cpu_copy_bandwidth(nbytes: int = 64 << 20, reps: int = 9) -> float:
    import time
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_capability(device: torch.device) -> int | None:
    """Compute capability as one number (90 for SM90, 120 for SM120); None off the GPU."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor
