"""asv: seconds per decoded token (median step time / batch) for every decode cell of every
suite (lower is better; tokens/s is its inverse)."""

from harness import suite

_NAMES, _VALUES = suite.param_space("decode")


def track_seconds_per_token(model, batch, input_len, backend, autotune, engine):
    return suite.run_one("decode", (model, batch, input_len, backend, autotune, engine))


track_seconds_per_token.params = _VALUES
track_seconds_per_token.param_names = _NAMES
track_seconds_per_token.unit = "seconds"
track_seconds_per_token.version = "1"
track_seconds_per_token.timeout = 3600
