"""The decode suite: cells (model x batch x backend x autotune), end-to-end step timing.

Per cell: build the engine (weights prepared once per worker, caches per batch), prefill a
random prompt of ``input_len`` tokens (eager, timed once; it also calibrates the static
NVFP4 activation scales, as ModelOpt calibration does offline), then ``output_len`` decode
steps, each one replay of a CUDA graph of the whole step timed by events. Tokens/s is
``batch / median step time`` (SGLang's ``median_decode_throughput``). ``autotune on`` first
runs one dummy decode step at the group's largest batch with the backend's tuner on (what
SGLang does before graph capture).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch

from harness import isolate, nvfp4
from harness.backends import GemmBackend, get_backend
from harness.gemm import AUTOTUNE_VALUES, describe_error, why_skipped
from harness.hardware import copy_bandwidth, default_device
from harness.measure import kernel_breakdown, summarize
from harness.models import gdn_kernel, get_model
from harness.models import checkpoint as ckpt
from harness.models import weights as weights_mod
from harness.models.engine import PREFILL_CHUNK_TOKENS, DecodeEngine, PreparedModel
from harness.moe import runners
from harness.progress import Progress
from harness.records import DecodeCell

# native: our engine; sglang: SGLang's one-batch benchmark; sglang-server: SGLang's server
# driven by its serving benchmark (how PR #26496 measured its figure).
ENGINES = ("native", "sglang", "sglang-server")
# A step's samples start after this many eager steps (lazy init, autotune keys, capture).
WARMUP_STEPS = 2


@dataclass(frozen=True)
class DecodeOptions:
    seed: int = 0
    isolate: bool = True
    use_graph: bool = True
    checkpoint: str | None = None
    # torch.compile the engine's non-GEMM pieces (GPU; fewer, fused kernels per step).
    compile: bool = False
    # One Triton kernel per Gated DeltaNet token (GPU with triton); False: separate torch ops.
    fused_gdn: bool = True
    # Two Triton kernels per attention decode token (GPU with triton); False: torch ops + SDPA.
    fused_attn: bool = True
    # Triton add+RMSNorm and SiLU-mul kernels (GPU with triton); False: torch (or compiled) ops.
    fused_norm: bool = True
    # Programmatic dependent launch of the engine's Triton kernels and GEMMs (SM90+; the
    # engine uses it at batch sizes up to engine.PDL_MAX_BATCH).
    pdl: bool = True
    # After the timed steps, this many more under the torch profiler: per-kernel time per step.
    profile_steps: int = 0
    # Headroom on top of weights + caches for activations and workspaces.
    memory_margin: float = 0.10
    # The prompt is prefilled in chunks of at most this many tokens (batch x positions).
    prefill_chunk: int = PREFILL_CHUNK_TOKENS


def plan(model: str, batches: list[int], input_len: int, output_len: int, backends: list[str],
         autotunes: list[str], engine: str = "native",
         checkpoint: str | None = None) -> list[DecodeCell]:
    """Cells of a decode run; with a checkpoint, ``model`` only names the records."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    if checkpoint:
        ckpt.scan(checkpoint)  # a bad directory fails here, naming the file or tensor
    elif engine == "native":
        get_model(model)  # fail early with the list of valid names
    for a in autotunes:
        if a not in AUTOTUNE_VALUES:
            raise ValueError(f"autotune must be one of {', '.join(AUTOTUNE_VALUES)}, got {a!r}")
    if input_len < 1 or output_len < 1:
        raise ValueError("input and output lengths must be positive")
    if any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive, got {batches}")
    cells = []
    for b in backends:
        get_backend(b)
        for a in autotunes:
            for bs in batches:
                cells.append(DecodeCell(model=model, batch=bs, input_len=input_len,
                                        output_len=output_len, backend=b, autotune=a,
                                        engine=engine, status="pending"))
    return cells


def cache_bytes(cfg, batch: int, max_len: int) -> int:
    """KV cache of the attention layers and conv + recurrent state of the DeltaNet layers."""
    attn = cfg.attention_layers * 2 * batch * cfg.kv_heads * max_len * cfg.head_dim * 2
    dk, hv = cfg.linear_head_dim, cfg.linear_v_heads
    ch = 2 * cfg.linear_qk_heads * dk + hv * dk
    gdn = cfg.deltanet_layers * batch * (hv * dk * dk * 4 + ch * cfg.conv_kernel * 2)
    return attn + gdn


def activation_bytes(cfg, batch: int, tokens: int) -> int:
    """Live activations of a forward over ``tokens`` tokens (the prefill is the peak): the
    widest GEMM's output with its input and gated halves, a few hidden-size buffers, and
    the fp32 logits of the last position."""
    widest = max(n for n, _ in weights_mod.all_linears(cfg).values())
    # routed experts: every (token, expert) pair's [2I] and [H] rows, and the sort buffers
    experts = tokens * cfg.experts_per_token * (3 * cfg.moe_intermediate + 2 * cfg.hidden) * 2
    return tokens * (3 * widest + 4 * cfg.hidden) * 2 + experts + batch * cfg.vocab * 4


def memory_check(backend: GemmBackend, cfg, batch: int, max_len: int, input_len: int,
                 device: torch.device, margin: float,
                 prefill_chunk: int = PREFILL_CHUNK_TOKENS,
                 expert_bytes_per_element: float = nvfp4.BYTES_PER_ELEMENT) -> str | None:
    """The reason a model cannot fit this GPU with this backend, naming the bytes; or None."""
    if device.type != "cuda":
        return None
    elements = sum(n * k for n, k in weights_mod.all_linears(cfg).values())
    dense = sum(torch.Size(s).numel() * 2 for s in weights_mod.dense_shapes(cfg).values())
    # routed experts in their MoE runner's format (NVFP4: 0.5 + 1/16 bytes per element)
    experts = int(weights_mod.expert_elements(cfg) * expert_bytes_per_element)
    weights = int(elements * backend.resident_bytes_per_element) + dense + experts
    chunk = batch * min(input_len, max(1, prefill_chunk // batch))  # the prefill's widest M
    need = int((weights + cache_bytes(cfg, batch, max_len) + activation_bytes(cfg, batch, chunk))
               * (1 + margin))
    free, total = torch.cuda.mem_get_info(device)
    if need > free:
        return (f"needs about {need / 2**30:.1f} GiB (weights {weights / 2**30:.1f} GiB in "
                f"{backend.name}'s format, KV/state caches {cache_bytes(cfg, batch, max_len) / 2**30:.1f} GiB, "
                f"activations); the GPU has {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    return None


def _load_weights(cfg_name: str, opts: DecodeOptions, plan: ckpt.CheckpointPlan | None,
                  device: torch.device):
    if plan is not None:
        return ckpt.load(plan, device)
    return weights_mod.synthetic(get_model(cfg_name), device, seed=opts.seed)


def run_group(cells: list[DecodeCell], opts: DecodeOptions, device: torch.device | None = None,
              on_cell: Callable[[DecodeCell], None] | None = None) -> list[DecodeCell]:
    """Cells sharing one (model, backend, autotune), in this process."""
    device = device or default_device()
    done = on_cell or (lambda c: None)
    if not cells:
        return cells
    backend = get_backend(cells[0].backend)
    autotune = cells[0].autotune == "on"
    reason = why_skipped(backend, cells[0].autotune, device)
    if reason is not None:
        for c in cells:
            c.status, c.reason = "skipped", reason
            done(c)
        return cells
    try:
        plan = ckpt.scan(opts.checkpoint) if opts.checkpoint else None
    except ckpt.CheckpointError as e:  # changed since the run was planned
        for c in cells:
            c.status, c.reason = "failed", f"loading weights: {e}"
            done(c)
        return cells
    cfg = plan.config if plan is not None else get_model(cells[0].model)
    moe_runner, moe_root = None, None
    if cfg.is_moe:
        from harness.moe.run import MoeOptions, config_dir
        moe_runner, moe_root = runners.for_backend(backend.name), config_dir(MoeOptions())
        reason = (f"no MoE runner pairs with the {backend.name} backend; those that do: "
                  f"{', '.join(sorted(runners.FOR_BACKEND))}" if moe_runner is None else
                  runners.why_not(moe_runner, cfg.moe_shape(), cells[0].autotune, "shared",
                                  device, moe_root, cfg.name))
        for c in cells:
            c.moe_runner = moe_runner or ""
        if reason is not None:
            for c in cells:
                c.status, c.reason = "skipped", f"MoE runner {moe_runner}: {reason}"
                done(c)
            return cells
    todo = []
    for c in cells:
        r = memory_check(backend, cfg, c.batch, _max_len(c, opts), c.input_len, device,
                         opts.memory_margin, opts.prefill_chunk,
                         runners.resident_bytes_per_element(moe_runner or ""))
        if r is not None:
            c.status, c.reason = "skipped", r
            done(c)
            continue
        todo.append(c)
    if not todo:
        return cells
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        weights = _load_weights(cells[0].model, opts, plan, device)
        load_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        model_bytes = weights.nvfp4_bytes() + weights.dense_bytes()
    except Exception as e:  # noqa: BLE001
        for c in todo:
            c.status, c.reason = "failed", f"loading weights: {describe_error(e)}"
            done(c)
        return cells
    fused_ok = device.type == "cuda" and gdn_kernel.available()
    try:
        model = PreparedModel(weights, backend, device, autotune=autotune,
                              compile=opts.compile and device.type == "cuda",
                              fused_gdn=opts.fused_gdn and fused_ok,
                              fused_attn=opts.fused_attn and fused_ok,
                              fused_norm=opts.fused_norm and fused_ok,
                              pdl=opts.pdl, moe_runner=moe_runner, moe_config_root=moe_root)
    except Exception as e:  # noqa: BLE001
        for c in todo:
            c.status, c.reason = "failed", f"preparing layers for {backend.name}: {describe_error(e)}"
            done(c)
        return cells
    tuned = not autotune
    for c in sorted(todo, key=lambda c: -c.batch):  # largest batch first: it tunes
        engine = None
        try:
            max_len = _max_len(c, opts)
            engine = DecodeEngine(model, c.batch, max_len, prefill_chunk=opts.prefill_chunk)
            c.weight_bytes = (sum(lin.weight_bytes for lin in model.lin.values())
                              + model.expert_bytes)
            c.model_bytes = model_bytes
            c.load_peak_bytes = load_peak
            c.weights, c.weights_notes = weights.source, list(weights.notes)
            _run_cell(c, engine, opts, device, tune=not tuned)
            tuned = True
        except Exception as e:  # noqa: BLE001 - one cell's failure must not sink the rest
            c.status, c.reason = "failed", describe_error(e)
        done(c)
        del engine  # caches are per batch; the prepared layers stay
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cells


def _run_cell(c: DecodeCell, engine: DecodeEngine, opts: DecodeOptions, device: torch.device,
              tune: bool) -> None:
    cfg = engine.cfg
    gen = torch.Generator(device=device).manual_seed(opts.seed + 1)
    prompt = torch.randint(0, cfg.vocab, (c.batch, c.input_len), generator=gen, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    # Calibrate the static activation scales on the prompt (W4A4 backends need them).
    model = engine.model
    if not all(lin.calibrated for lin in model.lin.values()):
        model.set_mode("calibrate")
        engine.prefill(prompt[:, : min(c.input_len, 64)])
        model.freeze_calibration()
    if tune:
        model.set_mode("tune")
        engine.step()
    model.set_mode("run")
    sync()
    t0 = time.perf_counter()
    logits = engine.prefill(prompt)
    sync()
    c.prefill_s = time.perf_counter() - t0
    bad = _bad_rows(logits)
    if bad:
        c.status, c.reason = "failed", f"prefill logits: {bad}"
        return
    for _ in range(WARMUP_STEPS):
        engine.step()
    sync()
    samples, method, run = _time_steps(engine, c.output_len, device, opts.use_graph)
    if opts.profile_steps:
        if engine.uses_pdl():
            # Under PDL each kernel's span includes its wait for the previous one: the
            # breakdown would add up to more than the step. Profile a plainly launched step.
            def plain_step() -> None:
                with engine.plain_launches():
                    engine.step()
            run = _capture_step(plain_step, engine.pos, device, opts.use_graph)[0]
            c.kernels_note = ("profiled with plain launches; the timed steps used "
                              "programmatic dependent launch")
        c.kernels = [dataclasses.asdict(k) for k in
                     kernel_breakdown(run, device, reps=opts.profile_steps)]
    bad_rows = engine.bad_rows.nonzero().flatten().tolist()
    c.health = {"nan_inf_or_zero_rows": len(bad_rows), "rows": c.batch,
                "ok": not bad_rows}
    if bad_rows:
        c.status = "failed"
        c.reason = (f"decode logits had NaN/Inf or all-zero rows (batch rows "
                    f"{bad_rows[:8]}) during the timed steps")
        return
    st = summarize(samples)
    c.status, c.reason = "ok", ""
    c.samples_s = samples
    c.median_step_s = st.median_s
    c.ci99_s = list(st.ci99_s)
    c.cv = st.cv
    c.tokens_per_s = c.batch / st.median_s
    ops = engine.model.ops.describe(device, c.batch)
    c.timing_method = method + (f", {ops}" if ops else "")
    context = c.input_len + WARMUP_STEPS + c.output_len // 2
    sb = engine.step_bytes(context)
    c.step_bytes = sb.total
    c.step_bytes_detail = dataclasses.asdict(sb)
    bw = copy_bandwidth()
    if bw:
        c.roofline_step_s = sb.total / bw
        c.roofline_frac = c.roofline_step_s / st.median_s


def _bad_rows(logits: torch.Tensor) -> str:
    lf = logits.float()
    nan = int((~torch.isfinite(lf)).any(-1).sum())
    zero = int((lf == 0).all(-1).sum())
    parts = []
    if nan:
        parts.append(f"{nan}/{lf.shape[0]} rows contain NaN/Inf")
    if zero:
        parts.append(f"{zero}/{lf.shape[0]} rows are all zero")
    return "; ".join(parts)


def _max_len(c: DecodeCell, opts: DecodeOptions) -> int:
    """Cache length: the prompt and every step after it: warm-up, the CUDA graph's warm-up
    (the + 1), timed, and profiled steps (a profile of plain launches under PDL warms up its
    own graph on one more)."""
    profiled = opts.profile_steps + 1 if opts.profile_steps else 0
    return c.input_len + WARMUP_STEPS + c.output_len + profiled + 1


def _capture_step(step: Callable[[], None], pos: torch.Tensor, device: torch.device,
                  use_graph: bool) -> tuple[Callable[[], None], str]:
    """``step`` (one decode step on the engine's static buffers) as a CUDA-graph replay where
    capture works, else ``step`` itself; and which one it is. Capture does not run the step:
    the engine's position ``pos`` is left as it was."""
    if device.type != "cuda" or not use_graph:
        return step, "cuda-events per step (eager)"
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()  # warm-up on a side stream, as capture wants
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        before = pos.clone()
        with torch.cuda.graph(graph):
            step()
        pos.copy_(before)
        return graph.replay, "cuda-graph per step + events"
    except Exception:  # noqa: BLE001 - some backends refuse capture: time them eagerly
        torch.cuda.synchronize(device)
        return step, "cuda-events per step (eager)"


def _time_steps(engine: DecodeEngine, steps: int, device: torch.device,
                use_graph: bool) -> tuple[list[float], str, Callable[[], None]]:
    """Per-step samples, how they were taken, and the step as timed (a graph replay)."""
    if device.type != "cuda":
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            engine.step()
            out.append(time.perf_counter() - t0)
        return out, "cpu-perf_counter per step", engine.step
    run, method = _capture_step(engine.step, engine.pos, device, use_graph)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    for i in range(steps):
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], method, run


# ---- process isolation and the CLI's entry ---------------------------------------------

def _skip_reason(c: DecodeCell) -> str | None:
    return why_skipped(get_backend(c.backend), c.autotune, default_device())


def run(cells: list[DecodeCell], opts: DecodeOptions, log: Callable[[str], None] = lambda s: None,
        on_cell: Callable[[DecodeCell], None] = lambda c: None) -> list[DecodeCell]:
    t0 = time.perf_counter()
    on_cell = Progress("decode", len(cells), log).counting(on_cell)
    native = [c for c in cells if c.engine == "native"]
    external = [c for c in cells if c.engine == "sglang"]
    served = [c for c in cells if c.engine == "sglang-server"]
    if native:
        if opts.isolate:
            isolate.run_isolated("decode", native, dataclasses.asdict(opts), _skip_reason, log,
                                 on_cell)
        else:
            for group in isolate.groups(native):
                run_group(group, opts, on_cell=lambda c: (log(progress_line(c)), on_cell(c)))
    if external:
        from harness.engines import sglang
        sglang.run(external, checkpoint=opts.checkpoint, log=log, on_cell=on_cell)
    if served:
        from harness.engines import sglang_server
        sglang_server.run(served, checkpoint=opts.checkpoint, log=log, on_cell=on_cell)
    log(f"{len(cells)} decode cells in {time.perf_counter() - t0:.1f} s")
    return cells


def progress_line(c: DecodeCell) -> str:
    what = f"[{c.engine} {c.backend} autotune={c.autotune}] {c.model} batch={c.batch}: {c.status}"
    if c.status == "ok":
        frac = f", {c.roofline_frac * 100:.0f}% of roofline" if c.roofline_frac else ""
        return f"{what} {c.tokens_per_s:.1f} tok/s (step {c.median_step_s * 1e3:.2f} ms{frac})"
    return f"{what} ({c.reason})"
