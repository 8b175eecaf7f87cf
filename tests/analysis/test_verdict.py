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


def test_words_for_a_real_difference_and_for_an_interval_containing_zero():
    indices = verdict.resample_indices(len(BETTER))
    real = verdict.compare("qg-lora-1a2b", BETTER, {"the base model (0-shot)": WORSE}, indices)[0]
    assert real.difference.distinguishable and real.difference.low > 0
    assert real.words().startswith("qg-lora-1a2b beats the base model (0-shot) by 0.567 (95% CI ")
    assert real.words().endswith(": a real difference")
    unclear = verdict.compare("qg-lora-1a2b", NOISY, {"qg-ia3-9f8e": CLOSE}, indices)[0]
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
    }


def test_identical_scores_tie_and_are_not_distinguishable():
    indices = verdict.resample_indices(len(NOISY))
    tie = verdict.compare("a", NOISY, {"b": NOISY}, indices)[0]
    assert tie.difference.ci95 == [0.0, 0.0]
    assert (
        tie.words()
        == "a and b tie: difference 0.000 (95% CI 0.000 to 0.000): not distinguishable on this data"
    )
