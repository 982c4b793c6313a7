"""The max |Δlogit| bar of a float export scales with the float32 reference's own error (issue 11)."""

from __future__ import annotations

from edgekit.kinds.language import REFERENCE_NOISE_FACTOR, Thresholds

BASE = {"top1": 1.0, "mean_kl": 1e-9, "greedy_prefix": 32, "greedy_tokens": 32, "tokenizer_match": True,
        "fidelity_reference": "file weights"}
T = Thresholds(min_top1=0.99, max_mean_kl=1e-6, max_abs_logit=2e-3, min_greedy_prefix=32)


def test_bar_is_the_recipes_where_the_reference_is_precise():
    m = {**BASE, "max_abs_logit": 3e-3, "reference_noise": 1e-5}
    assert T.abs_bar(m) == 2e-3
    assert T.check(m) == ["max |Δlogit| 3.000e-03 > 0.002"]


def test_bar_widens_to_a_multiple_of_the_reference_noise():
    m = {**BASE, "max_abs_logit": 3e-3, "reference_noise": 2.8e-3}
    assert T.abs_bar(m) == REFERENCE_NOISE_FACTOR * 2.8e-3
    assert T.check(m) == []
    bad = {**m, "max_abs_logit": 0.14}
    (fail,) = T.check(bad)
    assert fail == "max |Δlogit| 1.400e-01 > 0.0084 (3x the float32 reference's own error 2.80e-03)"
    assert any(r[0] == "max |Δlogit|" and "reference's own 2.8e-03" in r[2] for r in T.rows({**bad, "cost": None}))


def test_no_noise_recorded_keeps_the_recipes_bar():
    """Metrics recorded before the noise existed, or a family whose forward cannot run in float64."""
    for m in ({**BASE, "max_abs_logit": 3e-3}, {**BASE, "max_abs_logit": 3e-3, "reference_noise": None}):
        assert T.abs_bar(m) == 2e-3 and T.check(m)
    assert Thresholds(min_top1=0.99, max_mean_kl=1e-3).abs_bar({**BASE, "reference_noise": 1.0}) is None
