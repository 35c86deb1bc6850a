"""What the ``triton`` backend's small-M tuning saw, per layer shape: a repeatability probe.

    python scripts/tuner_probe.py SEED [--models qwen3.6-27b] [--m 32,64] > probe.jsonl
                                      # run it in several fresh processes

For each layer shape of ``--models`` at each ``--m`` it tunes the backend once
(``TritonW4A16.tune``: each small-M tuner's own search, then, for 8 < M <= 64 on SM90, the
path chooser's alternating timings) and prints one JSON line per shape and M:

* ``paths``: the chooser's best time of each path (``mma``, ``wgmma``, ``wgmma-ordered``;
  ``triton_w4a16.path_times``), in ms as Triton's ``do_bench`` protocol returns them (the
  backend's own cold-L2 timer);
* ``picked``: the path kept for each (N, K, M bucket);
* per tuner (``mma``, ``wgmma``, ``wgmma-ordered``), its four fastest configs with their
  times in ms (the autotuner's ``configs_timings`` of that shape's search).

Run in several processes, the lines show whether the tuner's choices repeat; the weights
come from ``SEED`` (one seed across processes: the same weights).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hopper_peers import parse_shape_args  # noqa: E402


def parse_args(argv=None) -> tuple[argparse.Namespace, list[tuple[int, int, int]]]:
    """-> (arguments, the (N, K, M) to probe). Exits 2 on a bad value, with the choices."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int, help="seed of the synthetic weights and activations")
    args, shapes = parse_shape_args(ap, models="qwen3.6-27b", m="32,64", argv=argv)
    return args, [(n, k, m) for n, k in shapes for m in args.m]


def main(argv=None) -> int:
    args, probes = parse_args(argv)
    import torch

    from harness.backends import LayerWeights, get_backend
    from harness.backends import triton_w4a16 as tw
    from harness.models.weights import synthetic_linear

    if not torch.cuda.is_available():
        print("tuner_probe.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    for n, k, m in probes:
        lw = LayerWeights(fp4=synthetic_linear(n, k, gen, dev).fp4)
        be = get_backend("triton")
        p = be.prepare(lw, autotune=True)
        x = torch.randn(m, k, generator=gen, device=dev).to(torch.bfloat16)
        gsf = torch.tensor(448 * 6 / float(x.abs().amax()), device=dev)
        be.tune(p, x, gsf)
        paths = tw.path_times(n, k, m)
        row = {"n": n, "k": k, "m": m,
               "paths": {name: t * 1e3 for name, t in paths.items()} if paths else None,
               "picked": {str(key): v for key, v in tw._SMALL_M_PATH.items()
                          if key[0] == n and key[1] == k}}
        for name, tuner in (("mma", tw._swap_ab_tuned()), ("wgmma", tw._wgmma_tuned()),
                            ("wgmma-ordered", tw._wgmma_ordered_tuned())):
            timings = getattr(tuner, "configs_timings", None) or {}
            row[name] = sorted(((v[0] if isinstance(v, list) else v), str(c))
                               for c, v in timings.items())[:4]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
