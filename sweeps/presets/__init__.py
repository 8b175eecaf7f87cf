"""One small preset per shipped task: only what differs from SweepSettings' defaults."""

from sweeps.presets import qg

PRESETS: dict[str, dict] = {"qg": qg.PRESET}
