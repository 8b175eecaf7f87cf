import numpy as np
import pytest

from analysis import verdict

# Hand-made per-example scores of two candidates on the same 12 test examples.
BETTER = [0.9, 0.8, 0.7, 1.0, 0.6, 0.9, 0.8, 0.7, 0.9, 1.0, 0.5, 0.8]
WORSE = [0.2, 0.3, 0.1, 0.4, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4, 0.2, 0.1]
NOISY = [0.9, 0.2, 0.7, 0.1, 0.6, 0.4, 0.8, 0.3, 0.9, 0.1, 0.5, 0.8]
CLOSE = [1.0, 0.3, 0.6, 0.2, 0.7, 0.3, 0.9, 0.2, 0.8, 0.2, 0.6, 0.7]  # NOISY's level, a shade above


def _direct_interval(statistic, indices) -> tuple[float, float]:
    """The bootstrap by hand: one resample at a time, the statistic of the drawn examples."""
    resampled = [statistic([int(i) for i in drawn]) for drawn in indices]
    low, high = np.quantile(resampled, [0.025, 0.975])
    return float(low), float(high)


def test_resamples_are_many_fixed_by_the_seed_and_draw_with_replacement():
    indices = verdict.resample_indices(len(BETTER))
    assert indices.shape == (verdict.RESAMPLES, len(BETTER)) and verdict.RESAMPLES >= 2_000
    assert np.array_equal(indices, verdict.resample_indices(len(BETTER)))
    assert not np.array_equal(indices, verdict.resample_indices(len(BETTER), seed=1))
    assert indices.min() == 0 and indices.max() == len(BETTER) - 1
    assert any(len(set(row)) < len(row) for row in indices.tolist())  # with replacement


def test_mean_interval_matches_a_direct_computation_with_the_same_resamples():
    indices = verdict.resample_indices(len(NOISY))
    estimate = verdict.mean_interval(NOISY, indices)
    low, high = _direct_interval(lambda drawn: sum(NOISY[i] for i in drawn) / len(drawn), indices)
    assert estimate.value == pytest.approx(sum(NOISY) / len(NOISY))
    assert (estimate.low, estimate.high) == pytest.approx((low, high))
    assert estimate.low < estimate.value < estimate.high


def test_paired_difference_matches_a_direct_computation_with_the_same_resamples():
    indices = verdict.resample_indices(len(BETTER))
    estimate = verdict.difference_interval(BETTER, NOISY, indices)

    def difference(drawn: list[int]) -> float:
        return sum(BETTER[i] for i in drawn) / len(drawn) - sum(NOISY[i] for i in drawn) / len(drawn)

    assert estimate.value == pytest.approx(sum(BETTER) / 12 - sum(NOISY) / 12)
    assert (estimate.low, estimate.high) == pytest.approx(_direct_interval(difference, indices))


def test_pairing_narrows_the_interval_when_the_two_move_together():
    """Per-example scores that rise and fall together: the paired difference is nearly constant."""
    harder = [score - 0.05 for score in NOISY]
    indices = verdict.resample_indices(len(NOISY))
    paired = verdict.difference_interval(NOISY, harder, indices)
    assert paired.value == pytest.approx(0.05)
    assert paired.high - paired.low < 1e-9 and paired.distinguishable
    assert verdict.mean_interval(NOISY, indices).high - verdict.mean_interval(NOISY, indices).low > 0.2


LORA = verdict.Side("qg-lora-1a2b", steps=160)
BASE = verdict.Side("the base model (0-shot)", steps=0, trains=False)
IA3 = verdict.Side("qg-ia3-9f8e", steps=160)


def test_words_for_a_real_difference_and_for_an_interval_containing_zero():
    indices = verdict.resample_indices(len(BETTER))
    real = verdict.compare(LORA, BETTER, {BASE: WORSE}, indices)[0]
    assert real.difference.distinguishable and real.difference.low > 0
    assert real.words().startswith("qg-lora-1a2b beats the base model (0-shot) by 0.567 (95% CI ")
    # The base trains nothing by design: there is no budget to match against it.
    assert real.words().endswith(": a real difference") and real.real_difference
    unclear = verdict.compare(LORA, NOISY, {IA3: CLOSE}, indices)[0]
    assert unclear.difference.low < 0 < unclear.difference.high and not unclear.difference.distinguishable
    assert unclear.words().endswith(": not distinguishable on this data")
    # Said from the leader's side: the interval is flipped with the sign.
    low, high = -unclear.difference.high, -unclear.difference.low
    assert (
        f"trails qg-ia3-9f8e by {-unclear.difference.value:.3f} (95% CI {low:.3f} to {high:.3f})"
        in unclear.words()
    )
    assert unclear.as_json() == {
        "against": "qg-ia3-9f8e",
        "difference": unclear.difference.value,
        "ci95": [unclear.difference.low, unclear.difference.high],
        "distinguishable": False,
        "steps": 160,
        "seeds": 1,
        "against_steps": 160,
        "against_seeds": 1,
        "equal_budget": True,
        "real_difference": False,
        "meaning": "not distinguishable on this data",
    }


def test_a_gap_between_unequal_budgets_is_never_called_real():
    """ASHA stopped the AdaLoRA trial at step 40: the gap measures its budget as much as the method."""
    indices = verdict.resample_indices(len(BETTER))
    stopped = verdict.Side("qg-adalora-81ec", steps=40)
    comparison = verdict.compare(LORA, BETTER, {stopped: WORSE}, indices)[0]
    assert comparison.difference.distinguishable  # the interval alone would call it real
    assert not comparison.equal_budget and not comparison.real_difference
    words = comparison.words()
    assert words.startswith("qg-lora-1a2b beats qg-adalora-81ec by 0.567 (95% CI ")
    assert words.endswith(": unequal budgets: qg-lora-1a2b trained 160 steps, qg-adalora-81ec trained 40")
    saved = comparison.as_json()
    assert (saved["steps"], saved["against_steps"], saved["equal_budget"], saved["real_difference"]) == (
        160,
        40,
        False,
        False,
    )
    assert saved["meaning"] == "unequal budgets: qg-lora-1a2b trained 160 steps, qg-adalora-81ec trained 40"


def test_identical_scores_tie_and_are_not_distinguishable():
    indices = verdict.resample_indices(len(NOISY))
    tie = verdict.compare(verdict.Side("a", 10), NOISY, {verdict.Side("b", 10): NOISY}, indices)[0]
    assert tie.difference.ci95 == [0.0, 0.0]
    assert (
        tie.words()
        == "a and b tie: difference 0.000 (95% CI 0.000 to 0.000): not distinguishable on this data"
    )


# Three seeds of each side on the 12 examples: a side's runs differ by more than its examples do.
SEEDS_A = [BETTER, [score - 0.3 for score in BETTER], [score - 0.1 for score in BETTER]]
SEEDS_B = [NOISY, [score + 0.05 for score in NOISY]]


def _two_level_by_hand(a: list[list[float]], b: list[list[float]], resamples: int) -> tuple[float, float]:
    """The seeds-and-examples bootstrap written out: in each resample, draw the examples (the same
    for both sides), then each side's runs, and take the difference of the drawn runs' means."""
    examples = verdict.resample_indices(len(a[0]), resamples)
    runs_a = np.random.default_rng([verdict.SEED, 1]).integers(0, len(a), size=(resamples, len(a)))
    runs_b = np.random.default_rng([verdict.SEED, 2]).integers(0, len(b), size=(resamples, len(b)))
    differences = []
    for drawn, drawn_a, drawn_b in zip(examples, runs_a, runs_b, strict=True):
        mean_a = sum(a[run][example] for run in drawn_a for example in drawn) / (len(drawn_a) * len(drawn))
        mean_b = sum(b[run][example] for run in drawn_b for example in drawn) / (len(drawn_b) * len(drawn))
        differences.append(mean_a - mean_b)
    low, high = np.quantile(differences, [0.025, 0.975])
    return float(low), float(high)


def test_seeds_and_examples_interval_matches_the_bootstrap_written_out():
    indices = verdict.resample_indices(len(BETTER), 500)
    estimate = verdict.difference_interval(SEEDS_A, SEEDS_B, indices)
    assert estimate.value == pytest.approx(np.mean(SEEDS_A) - np.mean(SEEDS_B))
    assert (estimate.low, estimate.high) == pytest.approx(_two_level_by_hand(SEEDS_A, SEEDS_B, 500))


def test_one_seed_per_side_is_the_paired_bootstrap_of_scipy():
    """An independent implementation: scipy's paired percentile bootstrap over the examples agrees
    within its resampling error (its own random draws)."""
    from scipy import stats

    ours = verdict.difference_interval([BETTER], [NOISY], verdict.resample_indices(len(BETTER), 20_000))
    theirs = stats.bootstrap(
        (np.array(BETTER), np.array(NOISY)),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        n_resamples=20_000,
        method="percentile",
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=0.01)
    assert ours == verdict.difference_interval(BETTER, NOISY, verdict.resample_indices(len(BETTER), 20_000))


def test_seed_spread_widens_the_interval_and_scipy_agrees_on_the_seeds_alone():
    """Seeds that disagree widen the interval beyond what the examples give; the seed level alone is
    the bootstrap of the runs' means, which scipy computes independently."""
    from scipy import stats

    indices = verdict.resample_indices(len(BETTER), 20_000)
    with_seeds = verdict.difference_interval(SEEDS_A, SEEDS_B, indices)
    examples_only = verdict.difference_interval(np.mean(SEEDS_A, axis=0), np.mean(SEEDS_B, axis=0), indices)
    assert with_seeds.high - with_seeds.low > 1.15 * (examples_only.high - examples_only.low)
    # Every example drawn once in every resample: what varies is the runs drawn, as in scipy's
    # unpaired bootstrap of the two sides' run means.
    every_example = np.tile(np.arange(len(BETTER), dtype=np.int32), (20_000, 1))
    runs_only = verdict.difference_interval(SEEDS_A, SEEDS_B, every_example)
    theirs = stats.bootstrap(
        (np.mean(SEEDS_A, axis=1), np.mean(SEEDS_B, axis=1)),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        n_resamples=20_000,
        method="percentile",
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert (runs_only.low, runs_only.high) == pytest.approx((theirs.low, theirs.high), abs=0.02)


def test_a_side_of_several_seeds_is_the_mean_of_every_run():
    indices = verdict.resample_indices(len(BETTER))
    estimate = verdict.mean_interval(SEEDS_A, indices)
    assert estimate.value == pytest.approx(np.mean(SEEDS_A))
    assert estimate.low < estimate.value < estimate.high
