"""Where each stage of a sweep keeps its trials: a Tune experiment directory inside the sweep's own,
which holds the search's (its baselines included)."""

# Where a sweep runs its baselines, and re-trains its finalists with more seeds (--finalist-seeds).
BASELINES_DIR = "baselines"
FINALISTS_DIR = "finalists"
# Where a sweep trains each method's best configuration to the whole budget, for the verdict to
# compare methods at equal budgets (sweeps.stages).
COMPARISON_DIR = "comparison"
# Where --extend runs the trials it adds to a finished sweep: extension-1, extension-2, ...
EXTENSION_PREFIX = "extension-"
# The stage of a trial in the sweep's own directory.
SEARCH_STAGE = "search"
