"""Numerical health of one output: NaN / Inf / all-zero rows and error against a reference.

Any NaN, Inf or all-zero row, or an error over tolerance, makes a cell ``failed``. These
are the failure shapes seen in the wild (sparse NaN rows in dense MLPs, cuDNN plans applied
to the wrong M bucket, all-zero outputs for some M), so every timed cell is checked first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Health:
    rows: int
    nan_rows: int
    inf_rows: int
    zero_rows: int
    rel_err: float | None
    tolerance: float | None

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.nan_rows:
            out.append(f"{self.nan_rows}/{self.rows} rows contain NaN")
        if self.inf_rows:
            out.append(f"{self.inf_rows}/{self.rows} rows contain Inf")
        if self.zero_rows:
            out.append(f"{self.zero_rows}/{self.rows} rows are all zero (reference is not)")
        if self.rel_err is not None and self.tolerance is not None:
            if not self.rel_err <= self.tolerance:  # also catches a NaN error
                out.append(f"relative error {self.rel_err:.3g} exceeds tolerance {self.tolerance:.3g}")
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def check(out: torch.Tensor, ref: torch.Tensor | None, tolerance: float | None) -> Health:
    """Health of ``out`` [rows, cols] against ``ref`` (relative Frobenius error)."""
    o = out.detach().float().reshape(out.shape[0], -1)
    nan_rows = int(torch.isnan(o).any(dim=1).sum())
    inf_rows = int(torch.isinf(o).any(dim=1).sum())
    rel_err = None
    if ref is not None:
        r = ref.detach().float().reshape(o.shape).to(o.device)
        zero_rows = int(((o == 0).all(dim=1) & (r != 0).any(dim=1)).sum())
        finite = torch.nan_to_num(o, nan=0.0, posinf=0.0, neginf=0.0)
        denom = float(torch.linalg.vector_norm(r))
        num = float(torch.linalg.vector_norm(finite - r))
        if nan_rows or inf_rows:
            rel_err = float("nan")
        else:
            rel_err = num / denom if denom > 0 else (0.0 if num == 0 else float("inf"))
    else:
        zero_rows = int((o == 0).all(dim=1).sum())
    return Health(rows=o.shape[0], nan_rows=nan_rows, inf_rows=inf_rows, zero_rows=zero_rows,
                  rel_err=rel_err, tolerance=tolerance)
