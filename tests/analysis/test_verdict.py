import statistics

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
    # Tolerance: both estimate the same exact bootstrap quantiles from 20,000 resamples of their
    # own. The resampled difference's standard deviation is 0.10 here, so each endpoint's Monte
    # Carlo standard error is sqrt(0.025 * 0.975 / 20_000) / normal_pdf(1.96) * 0.10 = 0.002, and
    # 0.003 for the gap between two: 0.01 is over three of them, while a 90% interval would move
    # each endpoint by about 0.03.
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


def _two_level_variance(*sides: np.ndarray) -> float:
    """The variance, over every possible resample, of the two-level bootstrap's resampled mean of
    one side (runs x examples), or of the paired difference of two, in closed form: no resampling.

    Per side, weights w over its R runs are multinomial(R, 1/R) / R, drawn apart for each side;
    E[w] = 1/R and E[w w^T] = (I - 11^T/R) / R^2 + 11^T / R^2. The n examples are drawn once for
    both sides. By the law of total variance, the variance is that of the runs' weighted means,
    var(run means) / R per side, plus the expected variance, given the weights, of the mean of n
    drawn examples: 1/n times the expected variance over examples of (side a's weighted scores
    minus side b's), whose cross term needs only E[w] since the sides' weights are independent.
    """
    examples = sides[0].shape[1]
    runs_part = sum(side.mean(axis=1).var() / side.shape[0] for side in sides)
    centred = [side - side.mean(axis=1, keepdims=True) for side in sides]  # each run, over examples
    own = 0.0
    for scores in centred:
        runs = scores.shape[0]
        second_moment = (np.eye(runs) - 1 / runs) / runs**2 + 1 / runs**2
        own += np.einsum("ri,rs,si->", scores, second_moment, scores) / examples
    cross = -2 * np.mean(centred[0].mean(axis=0) * centred[1].mean(axis=0)) if len(sides) == 2 else 0.0
    return runs_part + (own + cross) / examples


def test_a_large_two_level_interval_is_the_normal_one_of_the_closed_form_variance():
    """An oracle that shares nothing with the implementation but the data: with many runs and many
    examples, the percentile interval is the mean +- z(0.975) times the bootstrap's standard
    deviation, which _two_level_variance gives in closed form."""
    rng = np.random.default_rng(7)
    examples, runs = 400, 40
    # Symmetric effects (evenly spaced, shuffled), so the resampled means have no skew. Both sides
    # share how hard each example is (h: pairing cancels it) and list their runs in the same order
    # (drawing one side's runs for both would cancel most of their spread); side a's examples also
    # vary on their own (g), so the examples and the runs each make about half the difference's
    # variance, and a bootstrap missing either level misses by far more than the tolerance.
    h = rng.permutation(np.linspace(-0.3, 0.3, examples))
    g = rng.permutation(np.linspace(-0.2, 0.2, examples))
    side_a = 0.6 + np.linspace(-0.05, 0.05, runs)[:, None] + h + g + rng.uniform(-0.1, 0.1, (runs, examples))
    side_b = 0.5 + np.linspace(-0.04, 0.04, runs)[:, None] + h + rng.uniform(-0.1, 0.1, (runs, examples))
    indices = verdict.resample_indices(examples, 20_000)
    z = statistics.NormalDist().inv_cdf(0.975)
    estimates = {
        "mean": (verdict.mean_interval(side_a, indices), np.mean(side_a), _two_level_variance(side_a)),
        "difference": (
            verdict.difference_interval(side_a, side_b, indices),
            np.mean(side_a) - np.mean(side_b),
            _two_level_variance(side_a, side_b),
        ),
    }
    for name, (estimate, value, variance) in estimates.items():
        spread = float(np.sqrt(variance))
        assert estimate.value == pytest.approx(value), name
        # Tolerance: a 2.5% quantile of 20,000 resamples has a Monte Carlo standard error of
        # sqrt(0.025 * 0.975 / 20_000) / normal_pdf(1.96) = 0.019 spreads; the normal approximation
        # errs by under 0.01 spreads here (no skew; the excess kurtosis of a mean of 40 runs or 400
        # examples moves a 2.5% quantile by under 0.005). 0.1 spreads is five standard errors, yet
        # a 90% interval (0.32 spreads narrower each side), a bootstrap missing a level (0.18 on the
        # mean, whose runs make 17% of its variance; over 0.5 on the difference) or one drawing the
        # same runs for both sides falls outside it.
        expected = (value - z * spread, value + z * spread)
        assert (estimate.low, estimate.high) == pytest.approx(expected, abs=0.1 * spread), name
