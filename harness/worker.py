"""Worker process entry: ``python -m harness.worker gemm SPEC.json OUT.jsonl``.

Runs one group of cells (one backend, one autotune setting) and appends each finished cell
to OUT as one JSON line, so that the parent keeps everything finished before a crash.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("gemm", "decode"):
        print("usage: python -m harness.worker {gemm|decode} SPEC.json OUT.jsonl", file=sys.stderr)
        return 2
    kind, spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    from harness.records import append_jsonl, cell_from_json, cell_to_json

    cells = [cell_from_json(d) for d in spec["cells"]]

    def on_cell(c):
        append_jsonl(out_path, cell_to_json(c))
        if kind == "gemm":
            from harness.gemm import progress_line
            print(progress_line(c), file=sys.stderr, flush=True)
        else:
            from harness.decode import progress_line
            print(progress_line(c), file=sys.stderr, flush=True)

    if kind == "gemm":
        from harness.gemm import GemmOptions, run_group
        run_group(cells, GemmOptions(**spec["options"]), on_cell=on_cell)
    else:
        from harness.decode import DecodeOptions, run_group
        run_group(cells, DecodeOptions(**spec["options"]), on_cell=on_cell)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
