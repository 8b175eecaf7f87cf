"""One small preset per shipped task: only what differs from SweepSettings' defaults."""

from sweeps.presets import ner, qa, qg

PRESETS: dict[str, dict] = {"qg": qg.PRESET, "ner": ner.PRESET, "qa": qa.PRESET}
