"""What a trial leaves behind and reports, by name: the sweep's driver and the analysis read these
without importing the training code (torch's model stack and PEFT take seconds)."""

import json
from pathlib import Path

RECORD_FILE = "trial_record.json"
ADAPTER_DIR = "adapter"
# The figure that ranks a trial: its primary metric on the whole validation split.
FULL_VALIDATION_QUALITY = "quality_full_validation"
# A trained trial's periodic evaluations so far: what the early-stopping schedulers count its
# progress in. The baselines report none, so no scheduler compares or stops them.
EVALUATIONS = "evaluations"
# A kept checkpoint's final measurements when the trial did not take them (evaluation.scoring).
MEASURED_FILE = "kept_checkpoint.json"


def read_record(trial_dir: str | Path) -> dict:
    """The trial's record as it last wrote it: status, error, config, metrics, versions."""
    return json.loads((Path(trial_dir) / RECORD_FILE).read_text())
