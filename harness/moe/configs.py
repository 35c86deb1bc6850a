"""Triton fused-MoE kernel configurations in SGLang's own files (SGLang 0.5.23,
``sglang/srt/layers/moe/moe_runner/triton_utils/fused_moe_triton_config.py``).

A file maps token counts M (JSON keys, as strings) to one kernel configuration each
(BLOCK_SIZE_M/N/K, GROUP_SIZE_M, num_warps, num_stages; a down file may add USE_TMA). The up
(gate+up) and down kernels have a file each, named
``E=<experts>,N=<intermediate>,device_name=<GPU, spaces as _>[,dtype=..][,block_shape=[n, k]]
[,per_channel_quant=True][_down].json`` under ``configs/triton_<version as 3_6_0>/`` of a
directory (SGLang's own, or ``SGLANG_MOE_CONFIG_DIR``). For a batch, SGLang takes the entry
whose M is closest (the smaller one on a tie). Both kernels share one ``moe_align_block_size``
sort of the tokens by expert, padded to BLOCK_SIZE_M, so SGLang forces the down kernel's
BLOCK_SIZE_M to the up kernel's where they differ (a warning since PR #26496, an assert
before). ``pick`` makes that rule an option, so "down as tuned" and "down forced to up's
BLOCK_SIZE_M" can be measured against each other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
        "num_stages")
# Our NVFP4 weight-only kernel's selector: SGLang has no such dtype (its Triton fused MoE
# serves bf16/fp16, fp8, int8 and int4 weights), so its files never collide with ours.
NVFP4_W4A16 = "nvfp4_w4a16"


def file_name(experts: int, intermediate: int, device_name: str, dtype: str | None = None,
              block_shape: list[int] | None = None, per_channel_quant: bool = False,
              down: bool = False) -> str:
    """SGLang's ``get_config_file_name`` for a device name as CUDA reports it."""
    device = device_name.replace(" ", "_")
    dtype_part = f",dtype={dtype}" if dtype else ""
    block_part = f",block_shape={block_shape}" if block_shape and all(block_shape) else ""
    pcq = ",per_channel_quant=True" if per_channel_quant else ""
    return (f"E={experts},N={intermediate},device_name={device}{dtype_part}{block_part}{pcq}"
            f"{'_down' if down else ''}.json")


def version_dir(triton_version: str) -> str:
    return f"triton_{triton_version.replace('.', '_')}"


def load(path: str | os.PathLike) -> dict[int, dict]:
    """A config file as SGLang reads it: {M: config}, in the file's order."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: not a fused-MoE config file (an object of M -> config)")
    out = {}
    for key, cfg in doc.items():
        missing = [k for k in KEYS if k not in cfg]
        if missing or not key.isdigit():
            raise ValueError(f"{path}: entry {key!r} is not a config (missing {missing})")
        out[int(key)] = dict(cfg)
    return out


def dumps(configs: dict[int, dict]) -> str:
    """The text SGLang's tuner writes (``json.dump(..., indent=4)`` and a newline), by M."""
    return json.dumps({str(m): configs[m] for m in sorted(configs)}, indent=4) + "\n"


def save(path: str | os.PathLike, configs: dict[int, dict]) -> Path:
    from harness.records import atomic_write_text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(configs))
    return path


def closest(configs: dict[int, dict], m: int) -> dict:
    """SGLang's lookup: the entry whose M is nearest (``min`` over the keys in file order)."""
    return configs[min(configs, key=lambda x: abs(x - m))]


@dataclass(frozen=True)
class Picked:
    up: dict
    down: dict
    overridden: bool         # the down BLOCK_SIZE_M was forced to the up one's


def pick(up: dict[int, dict], down: dict[int, dict] | None, m: int,
         force_shared_block_m: bool = True) -> Picked:
    """The up and down configs for M tokens, as ``try_get_optimal_moe_config`` picks them
    (without a down file SGLang reuses the up file for down). ``force_shared_block_m`` is
    SGLang's rule; off, the down kernel keeps its own tuned BLOCK_SIZE_M, which needs its
    own sort of the tokens (the runner does one)."""
    up_cfg = dict(closest(up, m))
    down_cfg = dict(closest(down if down else up, m))
    over = force_shared_block_m and down_cfg["BLOCK_SIZE_M"] != up_cfg["BLOCK_SIZE_M"]
    if over:
        down_cfg["BLOCK_SIZE_M"] = up_cfg["BLOCK_SIZE_M"]
    return Picked(up_cfg, down_cfg, over)


def default_config(m: int, experts: int) -> dict:
    """SGLang's ``get_default_config`` for weights without an FP8 selector (the branch an
    untuned device falls back to), with Triton's own num_warps/num_stages defaults."""
    if m <= experts:
        cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    else:
        cfg = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
    return dict(cfg, num_warps=4, num_stages=3)
