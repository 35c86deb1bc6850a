"""The ``nvfp4-bench`` command."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def _csv_ints(s: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _int_at_least(low: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    parse.__name__ = "positive integer" if low == 1 else "non-negative integer"
    return parse


_positive, _nonnegative = _int_at_least(1), _int_at_least(0)


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (0.05 = 5%), got {s}")
    return v


def check_output(path: str | None, directory: bool = False) -> None:
    """Refuse an output path that cannot be written before anything is measured or read."""
    import os
    import tempfile
    from pathlib import Path

    if not path:
        return
    target = Path(path) if directory else Path(path).parent
    try:
        if target.exists() and not target.is_dir():
            raise UsageError(f"cannot write {path}: {target} is a file, not a directory")
        target.mkdir(parents=True, exist_ok=True)
        if not directory and Path(path).is_dir():
            raise UsageError(f"cannot write {path}: it is a directory")
        fd, probe = tempfile.mkstemp(prefix=".nvfp4-bench-probe-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None


def write_run_or_keep(path: str, *args, **kwargs) -> None:
    """Write a measured run to ``path``; if that fails (a full disk), keep it in the temp
    directory and say where, so the measurement is not lost."""
    import tempfile

    from harness.records import write_run
    try:
        write_run(path, *args, **kwargs)
    except OSError as e:
        kept = tempfile.NamedTemporaryFile(prefix="nvfp4-bench-run-", suffix=".json",
                                           delete=False).name
        write_run(kept, *args, **kwargs)
        raise UsageError(f"cannot write {path} ({e.strerror}); the run is kept in {kept}") from None


def _csv(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e6:.1f}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[list[str]], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))),
              file=out)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=out)


def skipped_lines(cells) -> list[str]:
    """Skipped cells, one line per (backend, autotune, reason): the tables keep the rest."""
    groups: dict[tuple, int] = {}
    for c in cells:
        if c.status == "skipped":
            key = (c.backend, c.autotune, c.reason)
            groups[key] = groups.get(key, 0) + 1
    return [f"skipped: {b} autotune={a}, {n} cells: {why}" for (b, a, why), n in groups.items()]


def print_cells(table, cells, all_rows: bool) -> None:
    """The cells' table (without skipped rows unless ``all_rows``), then one line per skip
    reason."""
    shown = cells if all_rows else [c for c in cells if c.status != "skipped"]
    if shown:
        print_table(table(shown))
    if not all_rows:
        for line in skipped_lines(cells):
            print(line)


def gemm_table(cells) -> list[list[str]]:
    rows = [["layer", "backend", "N", "K", "M", "autotune", "status", "median us", "99% CI us",
             "TFLOP/s", "GB/s", "%BW", "health"]]
    for c in cells:
        h = c.health or {}
        if c.status == "ok":
            health = f"ok err={h.get('rel_err', 0):.1e}"
        elif c.status == "failed":
            health = c.reason
        else:
            health = f"skipped: {c.reason}"
        ci = f"{c.ci99_s[0] * 1e6:.1f}-{c.ci99_s[1] * 1e6:.1f}" if c.ci99_s else "-"
        rows.append([c.layer, c.backend, str(c.n), str(c.k), str(c.m), c.autotune, c.status,
                     _fmt_us(c.median_s), ci, _fmt(c.tflops, ".2f"), _fmt(c.gbps, ".0f"),
                     _fmt(c.roofline_frac and c.roofline_frac * 100, ".0f"), health])
    return rows


def choice_table(choices) -> list[list[str]]:
    from harness import analysis
    rows = [["format", "layer", "M", "winner", "median us", "runner-up", "margin",
             "flashinfer auto (flashinfer-auto / flashinfer-fp8-auto)",
             "sglang SM120 default (flashinfer-cutlass)"]]
    for ch in choices:
        rows.append([ch.family, ch.layer, str(ch.m), ch.winner or "none", _fmt_us(ch.winner_median_s),
                     ch.runner_up or "-", analysis.margin_text(ch),
                     ch.auto_verdict, ch.sglang_default_verdict])
    return rows


def cmd_env(args) -> int:
    from harness.hardware import detect
    env = detect()
    if args.json:
        print(json.dumps(env.to_json(), indent=1))
        return 0
    d = env.to_json()
    for k, v in d.items():
        if k == "copy_bandwidth_Bps" and v:
            v = f"{v / 1e9:.0f} GB/s (device-to-device copy, read+write)"
        print(f"{k:20s} {v}")
    return 0


def cmd_gemm(args) -> int:
    from harness import analysis, gemm
    from harness.backends import resolve
    from harness.hardware import detect

    check_output(args.json)
    backends = [b.name for b in resolve(args.backends)]
    cells = gemm.plan(args.model, args.m, backends, args.autotune, layers=args.layers)
    opts = gemm.GemmOptions(samples=args.samples, warmup=args.warmup, cold_l2=args.cold_l2,
                            seed=args.seed, isolate=not args.in_process)
    env = detect()
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quiet else (lambda s: None)
    log(f"{len(cells)} cells on {env.machine_name()} "
        f"(copy bandwidth {env.copy_bandwidth_Bps / 1e9:.0f} GB/s)")
    gemm.run(cells, opts, log=log)
    choices = analysis.choice_map(cells)
    print_cells(gemm_table, cells, args.all_rows)
    print()
    print("choice map: fastest healthy backend per (layer, M)")
    print_table(choice_table(choices))
    if args.json:
        write_run_or_keep(args.json, env.to_json(), cells, command=sys.argv,
                          extra={"choice_map": [c.to_json() for c in choices],
                                 "autotune_gains": analysis.autotune_gains(cells),
                                 "options": opts.__dict__})
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def _write_json(args, env, cells, opts) -> None:
    """--json: the run (environment, cells, options) as a run file."""
    if args.json:
        write_run_or_keep(args.json, env.to_json(), cells, command=sys.argv,
                          extra={"options": opts.__dict__})
        print(f"\nwrote {args.json}", file=sys.stderr)


def moe_table(cells) -> list[list[str]]:
    rows = [["runner", "autotune", "down", "tokens", "status", "median us", "99% CI us",
             "experts hit", "GB/s", "%BW", "up BLOCK_M", "down BLOCK_M", "note"]]
    for c in cells:
        ci = f"{c.ci99_s[0] * 1e6:.1f}-{c.ci99_s[1] * 1e6:.1f}" if c.ci99_s else "-"
        rows.append([c.runner, c.autotune, c.down, str(c.tokens), c.status,
                     _fmt(c.median_s and c.median_s * 1e6, ".1f"), ci, str(c.experts_hit or "-"),
                     _fmt(c.gbps, ".0f"), _fmt(c.roofline_frac and c.roofline_frac * 100, ".0f"),
                     str((c.up_config or {}).get("BLOCK_SIZE_M", "-")),
                     str((c.down_config or {}).get("BLOCK_SIZE_M", "-")),
                     c.reason if c.status != "ok" else ""])
    return rows


def cmd_moe(args) -> int:
    from harness.hardware import detect
    from harness.moe import run as moe_run
    check_output(args.json)
    cells = moe_run.plan(args.model, args.tokens, args.runners, args.autotune, args.down)
    opts = moe_run.MoeOptions(samples=args.samples, warmup=args.warmup, seed=args.seed,
                              config_dir=args.config_dir)
    env = detect()
    moe_run.run(cells, opts, log=_log(args.quiet))
    print_cells(moe_table, cells, args.all_rows)
    _write_json(args, env, cells, opts)
    return 0


def cmd_tune_moe(args) -> int:
    from harness.hardware import default_device
    from harness.moe import run as moe_run
    from harness.moe import tune
    root = moe_run.config_dir(moe_run.MoeOptions(config_dir=args.config_dir))
    up, down = tune.tune(args.model, args.tokens, default_device(), root, log=_log(args.quiet))
    print(f"up:   {up}\ndown: {down}")
    return 0


def decode_table(cells) -> list[list[str]]:
    rows = [["engine", "backend", "autotune", "batch", "status", "tok/s", "step ms", "99% CI ms",
             "roofline ms", "%roofline", "note"]]
    for c in cells:
        ci = f"{c.ci99_s[0] * 1e3:.2f}-{c.ci99_s[1] * 1e3:.2f}" if c.ci99_s else "-"
        rows.append([c.engine, c.backend, c.autotune, str(c.batch), c.status,
                     _fmt(c.tokens_per_s, ".1f"), _fmt(c.median_step_s and c.median_step_s * 1e3, ".2f"),
                     ci, _fmt(c.roofline_step_s and c.roofline_step_s * 1e3, ".2f"),
                     _fmt(c.roofline_frac and c.roofline_frac * 100, ".0f"),
                     c.reason if c.status != "ok" else ""])
    return rows


def kernel_table(c, top: int = 25) -> str:
    """A profiled decode cell's step by kernel: the largest ``top`` and the rest summed."""
    total = sum(k["ms_per_call"] for k in c.kernels)
    launches = sum(k["launches_per_call"] for k in c.kernels)
    step = f"{c.median_step_s * 1e3:.2f} ms step, " if c.median_step_s else ""
    note = f" ({c.kernels_note})" if c.kernels_note else ""
    lines = [f"\n{c.backend} autotune={c.autotune} batch={c.batch}: {step}kernels {total:.2f} ms "
             f"in {launches:.0f} launches per step{note}"]
    for k in c.kernels[:top]:
        lines.append(f"  {k['ms_per_call']:8.3f} ms {100 * k['ms_per_call'] / total:5.1f}% "
                     f"{k['launches_per_call']:6.0f}x  {k['name'][:100]}")
    rest = c.kernels[top:]
    if rest:
        lines.append(f"  {sum(k['ms_per_call'] for k in rest):8.3f} ms        "
                     f"{sum(k['launches_per_call'] for k in rest):6.0f}x  ({len(rest)} more kernels)")
    return "\n".join(lines)


class _Progress:
    """A one-line progress bar on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet
        self.tty = sys.stderr.isatty()

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if self.tty:
            print("\r\033[K" + line, file=sys.stderr)
            self._bar()
        else:
            print(line, file=sys.stderr, flush=True)

    def cell(self, _c) -> None:
        self.done += 1
        if self.tty and not self.quiet:
            self._bar()

    def _bar(self) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cells",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def cmd_decode(args) -> int:
    from harness import decode
    from harness.backends import resolve
    from harness.hardware import detect

    check_output(args.json)
    if args.compile:
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--compile needs a GPU (it compiles the engine's pieces for CUDA); "
                             "this machine has none")
    backends = [b.name for b in resolve(args.backends)]
    model = args.model
    cells = decode.plan(model, args.batch, args.input_len, args.output_len, backends,
                        args.autotune, engine=args.engine, checkpoint=args.checkpoint)
    opts = decode.DecodeOptions(seed=args.seed, isolate=not args.in_process,
                                checkpoint=args.checkpoint, use_graph=not args.no_graph,
                                compile=args.compile, fused_gdn=not args.unfused_gdn,
                                fused_attn=not args.unfused_attn,
                                fused_norm=not args.unfused_norm, pdl=not args.no_pdl,
                                profile_steps=args.profile, prefill_chunk=args.prefill_chunk)
    env = detect()
    progress = _Progress(len(cells), args.quiet)
    progress.log(f"{len(cells)} decode cells on {env.machine_name()} "
                 f"(copy bandwidth {env.copy_bandwidth_Bps / 1e9:.0f} GB/s)")
    try:
        decode.run(cells, opts, log=progress.log, on_cell=progress.cell)
    finally:
        progress.close()
    print_cells(decode_table, cells, args.all_rows)
    if args.profile:
        for c in cells:
            if c.kernels:
                print(kernel_table(c))
    _write_json(args, env, cells, opts)
    return 0


def cmd_inspect(args) -> int:
    from harness.models import checkpoint

    info = checkpoint.describe(checkpoint.scan(args.checkpoint))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if key.endswith("_bytes"):
            value = f"{value / 2**20:.1f} MiB ({value} bytes)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        print(f"{key.replace('_', ' ')}: {value}")
    return 0


def _log(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))


def cmd_record(args) -> int:
    from harness import record, store
    conf = store.load_config(args.config, args.results, strict=args.strict)
    gpus = args.gpus
    if gpus == "all":
        import torch
        gpus = max(torch.cuda.device_count(), 1)
    elif not str(gpus).isdigit() or int(gpus) < 1:
        raise UsageError(f"--gpus takes a positive number or 'all', got {gpus!r}")
    rec = record.record(args.suite, conf, commit=args.commit, label=args.label,
                        machine=args.machine, shard=args.shard, gpus=int(gpus), fresh=args.fresh,
                        partial_only=args.partial_only, log=_log(args.quiet))
    counts = {st: sum(c.status == st for c in rec.cells) for st in ("ok", "skipped", "failed", "pending")}
    print(f"{rec.machine} {rec.commit[:8]} ({rec.env}): {counts['ok']} ok, {counts['skipped']} "
          f"skipped, {counts['failed']} failed" + (f", {counts['pending']} pending" if counts["pending"] else "")
          + (f"; {rec.resumed} resumed" if rec.resumed else ""))
    if rec.results_path:
        print(f"asv results: {rec.results_path}")
        print(f"run record:  {rec.run_path}")
    return 0 if not counts["pending"] else 3


def cmd_compare(args) -> int:
    from harness import compare, store
    check_output(args.output)
    conf = store.load_config(args.config, args.results, strict=args.strict)
    machine = store.pick_machine(conf, args.machine)
    base = store.resolve(conf, machine, args.base)
    head = store.resolve(conf, machine, args.head)
    rows = compare.compare(base, head, args.threshold)
    notes = compare.method_changes(store.timing_methods(conf, base),
                                   store.timing_methods(conf, head))
    text = compare.markdown(rows, base, head, args.threshold, only_changed=args.only_changed,
                            method_notes=notes)
    print(text)
    if args.output:
        from harness.records import atomic_write_text
        atomic_write_text(args.output, text)
    return 1 if compare.regressions(rows) else 0


def cmd_gate(args) -> int:
    from harness import gate, store
    check_output(args.json)
    conf = store.load_config(args.config, args.results, strict=args.strict)
    claims = gate.load_claims(args.claims)
    if args.only:
        known = {c.id for c in claims}
        bad = [i for i in args.only if i not in known]
        if bad:
            from harness.models import UnknownNameError
            raise UnknownNameError("claim", bad[0], sorted(known))
        claims = [c for c in claims if c.id in args.only]
    verdicts = gate.gate(conf, args.machine, args.commit, claims)
    print(gate.markdown(verdicts))
    if args.json:
        from harness.records import atomic_write_json
        atomic_write_json(args.json, [v.to_json() for v in verdicts])
    return 1 if any(v.verdict == gate.FAIL for v in verdicts) else 0


def cmd_import_pytest_benchmark(args) -> int:
    from harness import pytest_import, store
    conf = store.load_config(args.config, args.results, strict=args.strict)
    path, names = pytest_import.import_file(args.file, conf, machine=args.machine,
                                            commit=args.commit, label=args.label)
    print(f"stored {len(names)} pytest-benchmark benchmarks in {path}")
    return 0


def cmd_migrate(args) -> int:
    from harness import store
    conf = store.load_config(args.config, args.results, strict=args.strict)
    n = store.migrate(conf, log=_log(False))
    print(f"{n} results files moved to one benchmark per suite block" if n
          else "nothing to migrate: every stored cell is in a suite block's benchmark")
    return 0


def cmd_machine(args) -> int:
    """This machine's description, as asv's own commands need it: machine.json of the
    histories and asv's machine file, so `asv run --machine NAME` keeps the GPU fields."""
    from harness import store
    from harness.hardware import detect
    conf = store.load_config(args.config, args.results, strict=args.strict)
    env = detect(measure_bandwidth=False)
    info = store.machine_info(env.to_json())
    info["machine"] = args.machine or env.machine_name()
    with store.locked(conf):
        store.write_machine(conf, info)
    if args.name_only:
        print(info["machine"])
    else:
        print("\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def cmd_publish(args) -> int:
    """asv's own site (asv publish) of the histories, made to work offline."""
    import subprocess
    import tempfile
    from pathlib import Path

    from harness import store
    conf = store.load_config(args.config, args.results, strict=args.strict)
    with store.locked(conf):
        benchmarks = store.write_benchmarks(conf)
    stored, bad = store.scan_results(conf)
    for _, e in bad:
        store.skip_bad(conf, e)  # raises under --strict
    with tempfile.TemporaryDirectory(prefix="nvfp4-asv-publish-") as tmp:
        # asv reads only its config: hand it a results tree of links to the machines'
        # directories (the unreadable files left out, which asv would stop at) and a
        # benchmarks.json of the benchmarks that have results here (a suite never run on
        # these machines has no graph, and asv's page would ask for it)
        results_dir = Path(tmp) / "asv"
        skip = {p for p, _ in bad}
        for m in store.machines(conf):
            (results_dir / m).mkdir(parents=True)
            for f in (conf.results_dir / m).glob("*.json"):
                if f not in skip:
                    (results_dir / m / f.name).symlink_to(f.resolve())
        (results_dir / "benchmarks.json").write_text(json.dumps(dict(
            {k: v for k, v in benchmarks.items() if k in stored}, version=2)))
        doc = json.loads(conf.path.read_text())
        doc.update(results_dir=str(results_dir), html_dir=str(conf.html_dir),
                   repo=str(conf.repo), benchmark_dir=str(conf.bench_dir))
        conf_path = Path(tmp) / "asv.conf.json"
        conf_path.write_text(json.dumps(doc))
        rc = subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(conf_path)],
                            cwd=conf.path.parent).returncode
    if rc != 0:
        print(f"nvfp4-bench: asv publish exited with {rc}", file=sys.stderr)
        return 1
    from harness.report import asv_site
    asv_site.localize(conf.html_dir)  # its scripts served from the site: works offline
    regs = asv_site.regressions(conf.html_dir) or []
    print(f"asv site: {conf.html_dir / 'index.html'} (offline-ready; asv's step detection "
          f"finds {len(regs)} regressions)")
    for r in regs[:10]:
        print(f"  {r.benchmark} on {r.machine}: {r.before * 1e6:.2f} -> {r.after * 1e6:.2f} us "
              f"(x{r.ratio:.3f}) from {r.commit[:8]}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from harness import report, store
    check_output(args.output, directory=True)
    conf = (None if args.no_history
            else store.load_config(args.config, args.results, strict=args.strict))
    data = report.gather(conf, [Path(p) for p in args.runs], latest_only=not args.all_runs)
    out_dir = Path(args.output) if args.output else (conf.data_dir / "report" if conf else Path("report"))
    path = report.render(data, out_dir, log=_log(args.quiet))
    for p in data.problems:
        print(f"nvfp4-bench: warning: {p}", file=sys.stderr)
    print(f"report: {path}")
    return 0


class _DefaultsHelp(argparse.HelpFormatter):
    """Help with each option's default where it has one worth saying (not for flags, not
    None), lists written the way they are typed (1,8,64)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d is None or isinstance(d, bool) or d == argparse.SUPPRESS or action.nargs == 0
                or "default" in text or not action.option_strings):
            return text
        shown = ",".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown})".strip()


def _names(with_names: bool) -> dict[str, str]:
    """The valid models, backends and suites, for --help (importing the backends loads torch:
    only when help is asked for)."""
    if not with_names:
        return {k: "see --help" for k in ("models", "backends", "suites", "moe_models",
                                          "moe_runners")}
    from harness import suite
    from harness.backends import BACKENDS
    from harness.models import MODELS
    from harness.moe.runners import RUNNERS
    return {"models": ", ".join(MODELS), "backends": ", ".join(BACKENDS),
            "suites": ", ".join(suite.available()),
            "moe_models": ", ".join(n for n, c in MODELS.items() if c.is_moe),
            "moe_runners": ", ".join(RUNNERS)}


def build_parser(with_names: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvfp4-bench",
                                description="NVFP4 GEMM and decode benchmarking with histories")
    sub = p.add_subparsers(dest="cmd", required=True)
    names = _names(with_names)
    add_parser = sub.add_parser

    def add(name, **kw):  # every subcommand's --help shows the defaults
        return add_parser(name, formatter_class=_DefaultsHelp, **kw)
    sub.add_parser = add

    e = sub.add_parser("env", help="describe this machine (GPU, versions, copy bandwidth)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_env)

    def add_output_args(sp):
        sp.add_argument("--json", metavar="PATH", help="write the run (environment + cells) here")
        sp.add_argument("--all-rows", action="store_true",
                        help="one table row per skipped cell too (else one line per skip reason)")
        sp.add_argument("--quiet", action="store_true", help="no progress lines")

    g = sub.add_parser("gemm", help="NVFP4 GEMM backend comparison per layer shape and M")
    g.add_argument("--model", required=True, help=f"one of: {names['models']}")
    g.add_argument("--m", type=_csv_ints, default=[1, 8, 64], help="comma list of M (tokens)")
    g.add_argument("--backends", default="all",
                   help=f"comma list of: {names['backends']}; or 'all' (every native one)")
    g.add_argument("--autotune", type=_csv, default=["on", "off"], help="on,off | on | off")
    g.add_argument("--layers", type=_csv, default=None, help="only these layers (comma list)")
    l2 = g.add_mutually_exclusive_group()
    l2.add_argument("--cold-l2", dest="cold_l2", action="store_true", default=True,
                    help="flush L2 before every sample (weights come from DRAM)")
    l2.add_argument("--warm-l2", dest="cold_l2", action="store_false",
                    help="no flush: weights may be served from L2")
    g.add_argument("--samples", type=_positive, default=50, help="timed samples per cell")
    g.add_argument("--warmup", type=_nonnegative, default=5, help="untimed calls first")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and inputs")
    g.add_argument("--in-process", action="store_true",
                   help="run every cell in this process (faster; autotune on/off no longer isolated)")
    add_output_args(g)
    g.set_defaults(func=cmd_gemm)

    mo = sub.add_parser("moe", help="one MoE layer per runner, autotune and down rule, at token counts")
    mo.add_argument("--model", default="qwen3-30b-a3b", help=f"a MoE model: {names['moe_models']}")
    mo.add_argument("--tokens", type=_csv_ints, default=[1, 8, 32, 128, 256],
                    help="comma list of token counts")
    mo.add_argument("--runners", type=_csv, default=["moe-ref", "triton-moe"],
                    help=f"comma list of: {names['moe_runners']}")
    mo.add_argument("--autotune", type=_csv, default=["on", "off"], help="on,off | on | off")
    mo.add_argument("--down", type=_csv, default=["shared", "own"],
                    help="shared (down's BLOCK_SIZE_M forced to up's, SGLang's rule) | own")
    mo.add_argument("--samples", type=_positive, default=30, help="timed samples per cell")
    mo.add_argument("--warmup", type=_nonnegative, default=5, help="untimed calls first")
    mo.add_argument("--seed", type=int, default=0)
    mo.add_argument("--config-dir", help="tuned configs (default: results/moe-configs)")
    add_output_args(mo)
    mo.set_defaults(func=cmd_moe)

    tm = sub.add_parser("tune-moe", help="tune the Triton fused MoE for this GPU; writes "
                        "SGLang-format config files (up and down)")
    tm.add_argument("--model", default="qwen3-30b-a3b", help=f"a MoE model: {names['moe_models']}")
    tm.add_argument("--tokens", type=_csv_ints, default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                    help="comma list of token counts")
    tm.add_argument("--config-dir", help="where to write (default: results/moe-configs)")
    tm.add_argument("--quiet", action="store_true", help="no progress lines")
    tm.set_defaults(func=cmd_tune_moe)

    d = sub.add_parser("decode", help="end-to-end NVFP4 decode tokens/s per backend and autotune")
    d.add_argument("--model", required=True, help=f"one of: {names['models']}; or with "
                   "--checkpoint any name for the records")
    d.add_argument("--batch", type=_csv_ints, default=[1, 8, 32], help="comma list of batch sizes")
    d.add_argument("--input-len", type=_positive, default=1024, help="prompt tokens per sequence")
    d.add_argument("--output-len", type=_positive, default=128, help="decode steps timed")
    d.add_argument("--backends", default="triton,torch-bf16",
                   help=f"comma list of: {names['backends']}; or 'all'")
    d.add_argument("--autotune", type=_csv, default=["on", "off"], help="on,off | on | off")
    d.add_argument("--engine", default="native",
                   help="native | sglang (SGLang's one-batch benchmark) | sglang-server "
                   "(SGLang's server driven by its serving benchmark)")
    d.add_argument("--checkpoint", metavar="DIR", help="a local ModelOpt NVFP4 checkpoint "
                   "(none: synthetic weights from --seed)")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights and prompt")
    d.add_argument("--no-graph", action="store_true", help="time eager steps (no CUDA graph)")
    d.add_argument("--compile", action="store_true",
                   help="torch.compile the engine's non-GEMM pieces (GPU only)")
    d.add_argument("--unfused-gdn", action="store_true",
                   help="run each Gated DeltaNet token as separate torch ops instead of the "
                   "fused Triton kernel (the default on GPUs)")
    d.add_argument("--unfused-attn", action="store_true",
                   help="run each attention decode token as torch ops + SDPA instead of the "
                   "two fused Triton kernels (the default on GPUs)")
    d.add_argument("--unfused-norm", action="store_true",
                   help="run the residual add + RMSNorm and the SiLU-mul as torch ops (compiled "
                   "with --compile) instead of Triton kernels (the default on GPUs)")
    d.add_argument("--no-pdl", action="store_true",
                   help="launch the engine's kernels without programmatic dependent launch "
                   "(on by default at batch 1 where the GPU has it: SM90+)")
    d.add_argument("--prefill-chunk", type=_positive, default=8192, metavar="TOKENS",
                   help="prefill the prompt in chunks of at most TOKENS tokens (batch x "
                   "positions), as serving engines do (8192 is SGLang's default "
                   "--chunked-prefill-size)")
    d.add_argument("--profile", type=_nonnegative, default=0, metavar="STEPS",
                   help="after the timed steps, run STEPS more under the torch profiler and "
                   "report time per step by kernel (stored in the cell as `kernels`)")
    d.add_argument("--in-process", action="store_true",
                   help="run every cell in this process (no worker per backend and autotune)")
    add_output_args(d)
    d.set_defaults(func=cmd_decode)

    ins = sub.add_parser("inspect", help="what a ModelOpt NVFP4 checkpoint directory holds, as "
                         "the decode engine reads it (reads headers only)")
    ins.add_argument("checkpoint", metavar="DIR")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_inspect)

    def add_store_args(sp):
        sp.add_argument("--config", metavar="ASV_CONF", help="asv.conf.json (default: the project's)")
        sp.add_argument("--results", metavar="DIR", help="another results tree (e.g. baselines/results)")
        sp.add_argument("--machine", help="machine name (default: this machine / the only one stored)")
        sp.add_argument("--strict", action="store_true",
                        help="an unreadable history file is an error (exit 2) instead of being "
                        "named and skipped")

    r = sub.add_parser("record", help="run a suite and store it in the asv histories")
    r.add_argument("--suite", default="smoke", help=f"one of: {names['suites']}; or a suite .toml file")
    add_store_args(r)
    r.add_argument("--commit", help="the commit to record under (default: HEAD of the repo)")
    r.add_argument("--label", help="a run label (e.g. flashinfer-0.7.2) for runs of one commit")
    r.add_argument("--shard", help="i/n: only this shard of the suite's cells (CI jobs)")
    r.add_argument("--gpus", default="1", help="N or 'all': one process per GPU, cells sharded")
    r.add_argument("--fresh", action="store_true", help="discard cells of an interrupted record")
    r.add_argument("--partial-only", action="store_true", help=argparse.SUPPRESS)
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=cmd_record)

    c = sub.add_parser("compare", help="compare two stored runs (commits or labels); exit 1 on regressions")
    c.add_argument("base")
    c.add_argument("head")
    add_store_args(c)
    c.add_argument("--threshold", type=_fraction, default=0.05,
                   help="relative change that counts, in (0, 1) (0.05 = 5%%)")
    c.add_argument("--only-changed", action="store_true")
    c.add_argument("--output", metavar="FILE.md", help="also write the Markdown here")
    c.set_defaults(func=cmd_compare)

    gt = sub.add_parser("gate", help="check the claims in baselines/claims.toml; exit 1 on a failed claim")
    add_store_args(gt)
    gt.add_argument("--commit", help="a commit or label (default: the newest stored run)")
    gt.add_argument("--claims", help="claims file (default: baselines/claims.toml)")
    gt.add_argument("--only", type=_csv, help="only these claim ids")
    gt.add_argument("--json", metavar="PATH")
    gt.set_defaults(func=cmd_gate)

    ip = sub.add_parser("import-pytest-benchmark", help="store a pytest --benchmark-json file in the histories")
    ip.add_argument("file")
    add_store_args(ip)
    ip.add_argument("--commit")
    ip.add_argument("--label")
    ip.set_defaults(func=cmd_import_pytest_benchmark)

    mg = sub.add_parser("migrate", help="move stored cells into one asv benchmark per suite "
                        "block (histories written before the suites' blocks were benchmarks)")
    add_store_args(mg)
    mg.set_defaults(func=cmd_migrate)

    mc = sub.add_parser("machine", help="write this machine's description (GPU included) where "
                        "asv's own commands read it; prints it")
    add_store_args(mc)
    mc.add_argument("--name-only", action="store_true", help="print only the machine name")
    mc.set_defaults(func=cmd_machine)

    pb = sub.add_parser("publish", help="asv publish: the interactive history site")
    add_store_args(pb)
    pb.set_defaults(func=cmd_publish)

    rp = sub.add_parser("report", help="static HTML report with plots from histories and run files")
    rp.add_argument("runs", nargs="*", help="extra run JSON files (from gemm/decode --json)")
    rp.add_argument("--config", metavar="ASV_CONF")
    rp.add_argument("--results", metavar="DIR", help="another results tree (e.g. baselines/results)")
    rp.add_argument("--output", metavar="DIR", help="default: results/report")
    rp.add_argument("--all-runs", action="store_true", help="every stored run, not the newest per suite")
    rp.add_argument("--no-history", action="store_true", help="only the run files given")
    rp.add_argument("--strict", action="store_true",
                    help="an unreadable history or run file is an error (exit 2)")
    rp.add_argument("--quiet", action="store_true", help="no progress lines")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.models import UnknownNameError
    from harness.records import ResultsFileError
    from harness.store import StoreError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_names=any(a in ("-h", "--help") for a in argv))
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be answered properly
        return rc
    except (UnknownNameError, ValueError, UsageError, ResultsFileError, StoreError) as e:
        print(f"nvfp4-bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`nvfp4-bench gate | head`): no traceback, and no second
        # error when Python flushes stdout at exit.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("nvfp4-bench: error: output closed before it was all written", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # permissions, a full disk, a missing directory
        where = f"{e.filename}: " if e.filename else ""
        print(f"nvfp4-bench: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
