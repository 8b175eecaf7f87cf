import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from analysis import rank, report


def _frame(rows: list[tuple]) -> pl.DataFrame:
    columns = ["trial_id", "method", "status", "best_quality", "latency_s", "cost_usd", "adapter_bytes"]
    return pl.DataFrame(rows, schema=columns, orient="row")


HAND_BUILT = _frame(
    [
        ("a", "lora", "completed", 0.90, 0.10, 1.0, 100),  # best quality
        ("b", "ia3", "completed", 0.80, 0.05, 0.5, 10),  # cheaper, faster, smaller
        ("c", "lora", "stopped_early", 0.70, 0.20, 2.0, 200),  # dominated by a and b
        ("d", "qlora", "completed", 0.80, 0.05, 0.5, 10),  # ties b exactly: neither dominates
        ("e", "adalora", "failed", None, None, 0.1, None),  # failed: never on the front
        ("f", "base", "completed", 0.95, 0.01, 0.0, 0),  # baseline: shown, never a candidate
        ("g", "prompt_tuning", "completed", 0.60, 0.30, 0.4, 5),  # cheapest trained and smallest
    ]
)


def test_pareto_flags_on_a_hand_built_frame():
    expected = pl.Series("pareto", [True, True, False, True, False, False, True])
    assert_series_equal(rank.pareto_flags(HAND_BUILT), expected)


def test_utility_normalises_each_objective_with_its_direction():
    weights = {"quality": 1.0, "latency": 0.0, "cost": 0.0, "size": 0.0}
    scored = HAND_BUILT.select("trial_id", rank.utility(weights))
    expected = pl.DataFrame(
        {"trial_id": list("abcdefg"), "utility": [1.0, 2 / 3, 1 / 3, 2 / 3, None, None, 0.0]}
    )
    assert_frame_equal(scored, expected)


@pytest.mark.parametrize("objective", ["quality", "latency", "cost", "size"])
def test_a_tie_on_any_objective_scores_every_candidate_1_whatever_its_direction(objective):
    column = rank.WEIGHT_NAMES[objective]
    tied = HAND_BUILT.with_columns(pl.lit(0.5).alias(column))
    weights = dict.fromkeys(rank.WEIGHT_NAMES, 0.0) | {objective: 1.0}
    scored = tied.select("trial_id", rank.utility(weights))
    expected = [1.0, 1.0, 1.0, 1.0, None, None, 1.0]  # e failed, f is a baseline: not candidates
    assert scored["utility"].to_list() == expected


def test_leaderboard_puts_the_front_first_by_utility():
    board = rank.leaderboard(HAND_BUILT, {"quality": 1.0, "latency": 0.0, "cost": 2.0, "size": 0.0})
    # utilities: b = d = (2/3 + 2 x 0.9375) / 3 = 0.847, a = (1 + 2 x 0.625) / 3 = 0.75, g = 2/3
    assert board["trial_id"].to_list()[:4] == ["b", "d", "a", "g"]
    assert board["position"].to_list() == list(range(1, 8))
    assert board.filter(pl.col("trial_id") == "f")["utility"].item() is None


def test_the_winners_end_with_the_best_on_quality_when_the_trade_off_leaves_it_out():
    board = rank.leaderboard(
        HAND_BUILT.with_columns(best_checkpoint=pl.lit("checkpoint_000001")),
        {"quality": 1.0, "latency": 0.0, "cost": 2.0, "size": 0.0},
    )  # the front by utility: b, d, a (the best on quality), g
    chosen = report.chosen_winners(board, top=2)
    assert chosen["trial_id"].to_list() == ["b", "d", "a"]
    assert chosen["best_on_validation"].to_list() == [False, False, True]
    assert report.chosen_winners(board, top=3)["trial_id"].to_list() == ["b", "d", "a"]
    assert report.chosen_winners(board, top=1)["trial_id"].to_list() == ["b", "a"]


def test_method_summary_counts_trials_and_failures():
    summary = rank.method_summary(
        HAND_BUILT.with_columns(
            tokens_per_s=pl.lit(1.0),
            perplexity=pl.lit(2.0),
            train_loss=pl.lit(1.0),
            train_time_s=pl.lit(3.0),
            truncated_rate=pl.when(pl.col("trial_id") == "a").then(1.0).otherwise(0.0),
            accepted_draft_length=pl.when(pl.col("trial_id") == "a").then(None).otherwise(1.5),
            total_cost_usd=pl.col("cost_usd") + 1.0,
            stage=pl.when(pl.col("trial_id") == "a").then(pl.lit("comparison")).otherwise(pl.lit("search")),
        )
    )
    lora = summary.filter(pl.col("method") == "lora")
    assert lora["trials"].item() == 2 and lora["best_quality"].item() == 0.90
    # a is the comparison stage's re-run; the search gave LoRA c, which ASHA stopped.
    assert lora["search_trials"].item() == 1 and lora["stopped_early"].item() == 1
    assert summary.filter(pl.col("method") == "ia3")["stopped_early"].item() == 0
    assert lora["total_cost_usd"].item() == pytest.approx(5.0)  # (1 + 1) + (2 + 1): a and c in all
    assert lora["median_quality"].item() == pytest.approx(0.80)
    assert lora["truncated_rate"].item() == pytest.approx(
        0.5
    )  # median of a cut trial (a) and an uncut one (c)
    assert lora["accepted_draft_length"].item() == 1.5  # c's: a drafted nothing
    assert summary.filter(pl.col("method") == "adalora")["failures"].item() == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("speed=1", "unknown objective 'speed'"),
        ("quality=lots", "needs a number"),
        ("cost=-1", "must not be negative"),
    ],
)
def test_bad_weights_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        rank.parse_weights(text)


def test_weights_override_only_what_they_name():
    assert rank.parse_weights("cost=0.2") == rank.DEFAULT_WEIGHTS | {"cost": 0.2}


def test_a_finalist_ranks_on_the_mean_of_its_seeds_and_its_reruns_leave_the_frame():
    frame = pl.DataFrame(
        {
            "trial_id": ["a", "a-seed1", "a-seed2", "b", "c", "d", "d-seed1"],
            "config_without_seed": ["A", "A", "A", "B", "C", "D", "D"],
            "seed": [0, 1, 2, 0, 0, 0, 1],
            "status": ["completed"] * 4 + ["failed", "stopped_early", "completed"],
            # d was stopped at step 2; its re-run trained the whole budget, so it ranks on its own.
            "steps": [4, 4, 4, 4, None, 2, 4],
            "best_quality": [0.30, 0.20, 0.25, 0.28, None, 0.10, 0.40],  # c failed
        }
    )
    ranked = rank.across_seeds(frame).sort("trial_id")
    assert ranked["trial_id"].to_list() == ["a", "b", "c", "d", "d-seed1"]
    assert ranked["best_quality"].to_list() == pytest.approx([0.25, 0.28, None, 0.10, 0.40], nan_ok=True)
    assert ranked["seed_quality"].to_list()[:2] == [0.30, 0.28]
    assert ranked["seeds"].to_list() == [3, 1, None, 1, 1]
    assert ranked["quality_std"][0] == pytest.approx(0.05) and ranked["quality_std"][1] is None


def test_each_method_s_best_configuration_comes_from_the_search_alone():
    frame = HAND_BUILT.with_columns(
        config_without_seed=pl.col("trial_id").str.to_uppercase(),
        stage=pl.lit("search"),
    )
    rerun = frame.filter(pl.col("trial_id") == "c").with_columns(
        trial_id=pl.lit("c-again"), stage=pl.lit("comparison"), best_quality=pl.lit(0.99)
    )
    best = rank.best_configurations(pl.concat([frame, rerun]))
    # Best method first; a later stage's re-run (0.99) does not choose LoRA's configuration.
    assert best.select("method", "trial_id").rows() == [
        ("lora", "a"),
        ("ia3", "b"),
        ("qlora", "d"),
        ("prompt_tuning", "g"),
    ]
