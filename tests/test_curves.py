"""The levelling-off rule of the full preset (evaluation.curves), on hand-made validation histories."""

import pytest

from evaluation.curves import levelled_off


def history(*points):
    return [{"iteration": i, "acc": acc, "ci": 0.01} for i, acc in points]


def test_gain_is_measured_from_the_last_validation_before_the_final_fifth():
    verdict = levelled_off(history((200, 0.5), (700, 0.90), (800, 0.95), (900, 0.952), (1000, 0.954)))
    assert (verdict.start_iteration, verdict.end_iteration) == (800, 1000)
    assert verdict.gain_points == pytest.approx(0.4) and verdict.levelled
    rising = levelled_off(history((800, 0.95), (1000, 0.955)))
    assert rising.gain_points == pytest.approx(0.5) and not rising.levelled  # "under 0.5 point": 0.5 is not under


def test_a_short_window_uses_the_nearest_earlier_validation_and_falls_count_as_levelled():
    verdict = levelled_off(history((50, 0.6), (100, 0.7), (150, 0.80), (200, 0.79)))
    assert verdict.start_iteration == 150 and verdict.gain_points == pytest.approx(-1.0) and verdict.levelled


def test_too_few_validations_cannot_tell():
    assert levelled_off([]) is None
    assert levelled_off(history((10, 0.7))) is None
    assert levelled_off(history((900, 0.7), (1000, 0.8))) is None  # nothing at or before iteration 800
    with pytest.raises(ValueError, match="fraction"):
        levelled_off(history((1, 0.1), (2, 0.2)), fraction=1.5)
