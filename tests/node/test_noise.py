"""Noised overlap counts and the lifetime privacy budget (node/noise.py).

OpenDP draws from the operating system's secure randomness and takes no seed, so the
statistical tests below cannot be made deterministic. Instead every tolerance is derived
from the sampling error it has to absorb and set at five to seven standard errors, which
makes a spurious failure a less-than-one-in-a-million event per run, while errors of the
size that matter (a scale off by a factor of two, no noise, too little noise) miss the
bounds by many times the tolerance. Sample sizes keep the whole module to a few seconds
(each OpenDP draw costs about 0.15 ms).

Discrete Laplace with ``alpha = exp(-epsilon)`` (scale ``1/epsilon``) has
``P(noise = z) = (1 - alpha) / (1 + alpha) * alpha**|z|``, mean 0 and variance
``2 * alpha / (1 - alpha)**2``; its ratio of ``P(n + noise = x)`` to
``P(n + 1 + noise = x)`` is exactly ``e**epsilon`` or ``e**-epsilon`` at every ``x``, so the
mechanism meets the differential-privacy bound with equality and the tests can hold it
to the bound itself rather than to something looser.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import FrozenInstanceError, fields
from decimal import Decimal

import pytest
from opendp.mod import GLOBAL_FEATURES

from node import noise
from node.errors import BudgetExhausted, NodeError
from node.noise import PrivacyBudget, ReleasedCount, noised_count, released_count

# --- the budget -------------------------------------------------------------------------


def test_spends_add_up_exactly_in_decimal() -> None:
    budget = PrivacyBudget(total=Decimal("1"))
    for _ in range(10):
        budget = budget.spend(Decimal("0.1"))
    # Ten spends of 0.1 are exactly 1 — in floats they are 0.9999999999999999.
    assert sum([0.1] * 10) != 1.0
    assert budget.spent == Decimal("1")
    assert budget.remaining == 0
    assert isinstance(budget.spent, Decimal) and isinstance(budget.remaining, Decimal)


def test_spending_to_exactly_the_total_is_allowed_and_nothing_more() -> None:
    budget = PrivacyBudget(total=Decimal("1.0"), spent=Decimal("0.75"))
    assert budget.can_spend(Decimal("0.25"))
    assert not budget.can_spend(Decimal("0.26"))
    budget = budget.spend(Decimal("0.25"))
    assert budget.spent == budget.total
    assert not budget.can_spend(Decimal("0.01"))
    with pytest.raises(BudgetExhausted):
        budget.spend(Decimal("0.01"))


def test_a_refused_spend_leaves_the_budget_untouched() -> None:
    budget = PrivacyBudget(total=Decimal("0.5"), spent=Decimal("0.3"))
    with pytest.raises(BudgetExhausted, match="0.2 of 0.5 left"):
        budget.spend(Decimal("0.3"))
    assert budget == PrivacyBudget(total=Decimal("0.5"), spent=Decimal("0.3"))
    assert budget.spend(Decimal("0.2")).remaining == 0


def test_budget_exhausted_is_a_node_error() -> None:
    assert issubclass(BudgetExhausted, NodeError)


def test_the_budget_is_lifetime_with_no_reset() -> None:
    # The budget is the total and what was spent, nothing else: no period, no clock, no
    # date it was last reset, and no method that gives budget back.
    assert [f.name for f in fields(PrivacyBudget)] == ["total", "spent"]
    public = {name for name in dir(PrivacyBudget) if not name.startswith("_")}
    assert public == {"total", "spent", "remaining", "can_spend", "spend"}
    assert not any(word in name for name in public for word in ("reset", "day", "period"))
    exhausted = PrivacyBudget(total=Decimal("1"), spent=Decimal("1"))
    with pytest.raises(FrozenInstanceError):
        exhausted.spent = Decimal(0)  # type: ignore[misc]
    with pytest.raises(BudgetExhausted):
        exhausted.spend(Decimal("0.01"))


def test_budgets_refuse_floats_and_nonsense() -> None:
    with pytest.raises(TypeError):
        PrivacyBudget(total=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PrivacyBudget(total=Decimal(1)).spend(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PrivacyBudget(total=Decimal(0))
    with pytest.raises(ValueError):
        PrivacyBudget(total=Decimal("Infinity"))
    with pytest.raises(ValueError):
        PrivacyBudget(total=Decimal(1), spent=Decimal("1.01"))
    with pytest.raises(ValueError):
        PrivacyBudget(total=Decimal(1), spent=Decimal("-0.1"))
    for bad in (Decimal(0), Decimal("-0.1"), Decimal("NaN")):
        with pytest.raises(ValueError):  # a negative spend would hand budget back
            PrivacyBudget(total=Decimal(1)).spend(bad)


# --- the mechanism ----------------------------------------------------------------------


def _alpha(epsilon: Decimal) -> float:
    return math.exp(-float(epsilon))


def _variance(epsilon: Decimal) -> float:
    alpha = _alpha(epsilon)
    return 2 * alpha / (1 - alpha) ** 2


def _samples(true_count: int, epsilon: Decimal, n: int) -> list[int]:
    return [noised_count(true_count, epsilon=epsilon) for _ in range(n)]


@pytest.mark.parametrize("epsilon", ["0.1", "0.01", "0.7", "1", "3", "0.123456789"])
def test_opendp_certifies_exactly_epsilon_for_one_customer(epsilon: str) -> None:
    measurement = noise._mechanism(Decimal(epsilon))
    # OpenDP leaves Measurement.map unannotated.
    certified = Decimal(measurement.map(1))  # type: ignore[no-untyped-call]
    assert certified <= Decimal(epsilon)
    assert certified > Decimal(epsilon) * Decimal("0.999999")  # and not more noise than asked
    two_customers = Decimal(measurement.map(2))  # type: ignore[no-untyped-call]
    assert two_customers <= 2 * Decimal(epsilon)  # losses add up per customer


@pytest.mark.parametrize(("epsilon", "true_count"), [("0.5", 200), ("0.1", 2000)])
def test_noise_is_centred_with_the_scale_spread(epsilon: str, true_count: int) -> None:
    eps, n = Decimal(epsilon), 3000
    values = _samples(true_count, eps, n)
    assert all(type(v) is int and v >= 0 for v in values)
    # The true count is many standard deviations (2.8 and 14) from 0, so clamping never
    # bites and the mean is unbiased. Its standard error is sqrt(var / n) (0.05 and 0.26);
    # allow six of them.
    mean = sum(values) / n
    assert abs(mean - true_count) <= 6 * math.sqrt(_variance(eps) / n)
    # Sample variance: its relative standard error is about sqrt((kurtosis - 1) / n), with
    # kurtosis 6 for Laplace, i.e. 4 %; allow 25 %. Scale off by 2x means variance off by 4x.
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    assert variance == pytest.approx(_variance(eps), rel=0.25)
    assert len(set(values)) > 5  # really noised


def test_counts_are_ints_clamped_at_zero() -> None:
    eps = Decimal("0.5")
    values = _samples(0, eps, 1000)
    assert all(type(v) is int and v >= 0 for v in values)
    # P(noise <= 0) = 1 / (1 + alpha) = 0.62 of the draws clamp to 0 (std error 0.015).
    zeros = values.count(0) / len(values)
    assert zeros == pytest.approx(1 / (1 + _alpha(eps)), abs=0.08)


def test_noised_count_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        noised_count(-1, epsilon=Decimal("0.5"))
    with pytest.raises(TypeError):
        noised_count(True, epsilon=Decimal("0.5"))
    with pytest.raises(TypeError):
        noised_count(5, epsilon=0.5)  # type: ignore[arg-type]
    for bad in (Decimal(0), Decimal("-1"), Decimal("Infinity"), Decimal("NaN")):
        with pytest.raises(ValueError):
            noised_count(5, epsilon=bad)


def test_contrib_is_enabled_only_while_the_mechanism_is_built() -> None:
    # Epsilons no other test uses, so each call builds a new measurement.
    saved = set(GLOBAL_FEATURES)
    try:
        GLOBAL_FEATURES.discard("contrib")
        noised_count(10, epsilon=Decimal("0.4321"))
        assert "contrib" not in GLOBAL_FEATURES  # not left on for the rest of the process
        GLOBAL_FEATURES.add("contrib")
        noised_count(10, epsilon=Decimal("0.4322"))
        assert "contrib" in GLOBAL_FEATURES  # nor switched off under someone who wanted it
    finally:
        GLOBAL_FEATURES.clear()
        GLOBAL_FEATURES.update(saved)


# --- the privacy claim ------------------------------------------------------------------
# "Two requests whose input sets differ by one customer no longer reveal that customer":
# the recipient varies its own set so that the true overlap is n or n + 1 and looks at the
# count it gets back.


PRIVACY_EPSILON = Decimal("0.5")
PRIVACY_N = 40  # far enough from 0 that clamping plays no part
PRIVACY_SAMPLES = 6000  # per input set
MIN_OUTCOME_SAMPLES = 200  # outcomes seen less often say too little about a ratio
Z = 5.0  # standard errors of slack (one-sided tail 3e-7 per outcome)


def _worst_log_ratio_excess(a: list[int], b: list[int], epsilon: float) -> float:
    """The largest ``|log(P_a(x) / P_b(x))| - epsilon - Z * stderr`` over the outcomes seen at
    least MIN_OUTCOME_SAMPLES times under both inputs; ``inf`` if one input produces an
    outcome the other never does (a certain tell). Positive means the bound is broken.

    The standard error of ``log(count_a / count_b)`` is ``sqrt(1/count_a + 1/count_b)``
    (delta method; counts are at least 200, where it is accurate).
    """
    count_a, count_b = Counter(a), Counter(b)
    worst = -math.inf
    for outcome in count_a.keys() | count_b.keys():
        ca, cb = count_a[outcome], count_b[outcome]
        if max(ca, cb) >= MIN_OUTCOME_SAMPLES and min(ca, cb) == 0:
            return math.inf
        if min(ca, cb) < MIN_OUTCOME_SAMPLES:
            continue
        log_ratio = abs(math.log((ca / len(a)) / (cb / len(b))))
        worst = max(worst, log_ratio - epsilon - Z * math.sqrt(1 / ca + 1 / cb))
    return worst


def _best_distinguisher_accuracy(low: list[int], high: list[int]) -> float:
    """Accuracy of the best "guess n+1 when the value is above t" rule, over every t,
    with each input set equally likely."""
    low_sorted, high_sorted = sorted(low), sorted(high)
    best = 0.5
    for t in range(min(low_sorted) - 1, max(high_sorted) + 1):
        right_on_low = sum(1 for v in low_sorted if v <= t) / len(low)
        right_on_high = sum(1 for v in high_sorted if v > t) / len(high)
        best = max(best, (right_on_low + right_on_high) / 2)
    return best


def _accuracy_bound(epsilon: float) -> float:
    # An epsilon-DP release lets no test tell two neighbouring inputs apart with
    # probability above e^eps / (1 + e^eps) when both are equally likely a priori.
    return math.exp(epsilon) / (1 + math.exp(epsilon))


# Accuracy over 2 x 6000 draws has standard error at most sqrt(0.25 / 12000) = 0.005;
# maximising over thresholds adds a little more. 0.03 is six standard errors.
ACCURACY_SLACK = 0.03


def _draws(mechanism: Callable[[int], int], n: int) -> tuple[list[int], list[int]]:
    return (
        [mechanism(PRIVACY_N) for _ in range(n)],
        [mechanism(PRIVACY_N + 1) for _ in range(n)],
    )


def test_one_customer_more_or_less_is_not_revealed() -> None:
    eps = float(PRIVACY_EPSILON)
    low, high = _draws(lambda c: noised_count(c, epsilon=PRIVACY_EPSILON), PRIVACY_SAMPLES)

    # (a) Every outcome is at most about e^eps times likelier under one set than the other.
    # (Either way round: the ratio is taken in absolute log.)
    assert _worst_log_ratio_excess(low, high, eps) <= 0

    # (b) The best single-observation guess is right at most e^eps / (1 + e^eps) = 62 % of
    # the time: not far from a coin flip. Discrete Laplace meets that bound with equality,
    # so it should land near it, not far below (which would mean needless noise).
    accuracy = _best_distinguisher_accuracy(low, high)
    assert accuracy <= _accuracy_bound(eps) + ACCURACY_SLACK
    assert accuracy >= _accuracy_bound(eps) - ACCURACY_SLACK


def test_the_privacy_checks_catch_a_mechanism_that_reveals_the_customer() -> None:
    eps = float(PRIVACY_EPSILON)
    # Without noise, the counts themselves tell the two sets apart every time.
    low, high = _draws(lambda c: c, MIN_OUTCOME_SAMPLES)
    assert _worst_log_ratio_excess(low, high, eps) == math.inf
    assert _best_distinguisher_accuracy(low, high) == 1.0
    # With four times too little noise (epsilon 2 spent where 0.5 was promised) both
    # checks fail by a wide margin: accuracy 88 % against the 62 % bound.
    weak = Decimal(4) * PRIVACY_EPSILON
    low, high = _draws(lambda c: noised_count(c, epsilon=weak), 3000)
    assert _worst_log_ratio_excess(low, high, eps) > 0
    assert _best_distinguisher_accuracy(low, high) > _accuracy_bound(eps) + ACCURACY_SLACK


# --- suppression ------------------------------------------------------------------------


def test_suppression_is_decided_on_the_noised_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def fixed(value: int) -> Callable[..., int]:
        return lambda true_count, *, epsilon: value

    eps = Decimal("0.5")
    monkeypatch.setattr(noise, "noised_count", fixed(4))  # true 100, noised below k
    assert released_count(100, epsilon=eps, k=5) == ReleasedCount(value=0, suppressed=True)
    monkeypatch.setattr(noise, "noised_count", fixed(9))  # true 2, noised above k
    assert released_count(2, epsilon=eps, k=5) == ReleasedCount(value=9, suppressed=False)
    monkeypatch.setattr(noise, "noised_count", fixed(5))  # exactly k is released
    assert released_count(5, epsilon=eps, k=5) == ReleasedCount(value=5, suppressed=False)


def test_suppression_near_k_is_itself_noisy() -> None:
    # Were the true count to decide, k - 1 would always be suppressed and k never, and
    # the "suppressed" flag alone would reveal the customer that tips the count over k.
    eps, k, n = Decimal("0.5"), 10, 1000
    below = [released_count(k - 1, epsilon=eps, k=k) for _ in range(n)]
    at = [released_count(k, epsilon=eps, k=k) for _ in range(n)]
    for release in below + at:
        if release.suppressed:
            assert release.value == 0
        else:
            assert release.value >= k
    # P(noise >= 1) = alpha / (1 + alpha) = 0.38 either way (std error 0.015).
    expected = _alpha(eps) / (1 + _alpha(eps))
    released_below = sum(not r.suppressed for r in below) / n
    suppressed_at = sum(r.suppressed for r in at) / n
    assert released_below == pytest.approx(expected, abs=0.08)
    assert suppressed_at == pytest.approx(expected, abs=0.08)


def test_released_count_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        released_count(10, epsilon=Decimal("0.5"), k=0)
