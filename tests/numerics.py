"""Numerical helpers the kernel tests share."""


def rel_err(out, ref) -> float:
    """Relative Frobenius error of ``out`` against the fp32 reference ``ref``."""
    return ((out.float() - ref).norm() / ref.norm()).item()
