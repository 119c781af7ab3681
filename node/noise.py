"""Noised overlap counts and the privacy budget they are charged to.

An ``overlap`` agreement lets the recipient learn how many consented customers the two
sides share — never the exact number. The owner node adds discrete Laplace noise with
OpenDP (DESIGN.md "Who learns what", docs/audiences.md "Output modes" and "Budget"):

* **Why noise.** The recipient controls its own input set. Without noise it could ask
  twice, with sets that differ by one customer, and the difference of the two counts
  would say whether that customer is the owner's. A count has sensitivity 1 (one customer
  changes it by at most one), so discrete Laplace noise of scale ``1/epsilon`` makes each
  release ``epsilon``-differentially private: every outcome is at most ``e**epsilon``
  times likelier under one input set than under the other.
* **Why OpenDP.** Floating-point Laplace samplers leak through their low bits (Mironov
  2012); OpenDP samples the discrete Laplace distribution exactly on integers.
* **Why a budget.** Each release spends ``epsilon``; privacy losses add up, so repeated
  requests are refused once the agreement's lifetime ``epsilon_total`` is spent.
  Nothing ever resets it: a daily allowance would let a patient recipient average the
  noise away. The caller charges the budget *before* it releases a count, and a
  suppressed count costs the same as a released one (whether it was suppressed is
  itself an output of the mechanism).
* **Why suppress on the noised count.** Counts below the agreement's ``k`` are
  withheld. The decision is taken on the *noised* count, so it is post-processing of an
  ``epsilon``-DP output and stays ``epsilon``-DP. Deciding on the true count would make
  "suppressed" an exact, noise-free answer to "is the overlap below k?": two input sets
  of sizes ``k - 1`` and ``k`` would be told apart with certainty, which is exactly the
  differencing attack the noise is there to stop.

Budget arithmetic is ``Decimal`` only (the agreement signs its budget as decimal
strings); floats never touch it, so spends add up exactly and the boundary is exact.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from functools import lru_cache
from typing import Final

import opendp.prelude as dp
from opendp.mod import GLOBAL_FEATURES, Measurement, OpenDPException

from node.errors import BudgetExhausted

__all__ = [
    "PrivacyBudget",
    "ReleasedCount",
    "noised_count",
    "released_count",
]

# Overlap counts are bounded by the agreements' maximum set sizes; 64-bit leaves room.
_MAX_COUNT: Final = 2**63 - 1
# The integer type OpenDP computes in (atom_domain(T=int) would be 32-bit).
_COUNT_TYPE: Final = dp.i64
# How many ulps the scale may be raised above 1/epsilon before we give up (see _mechanism).
_MAX_NUDGES: Final = 64
# Budget arithmetic never rounds: an inexact result raises instead of drifting.
_EXACT: Final = Context(prec=100, traps=[Inexact, Rounded, InvalidOperation, Overflow])

# OpenDP gates every mechanism whose proof has not completed its vetting process behind
# the "contrib" feature flag, and make_laplace is one of them; enabling it is OpenDP's
# required acknowledgement. The flag is process-global, so we enable it only while we
# construct the one measurement we use (the flag is checked at construction, not when
# the measurement runs), restore it afterwards, and hold a lock so that two threads
# never interleave enable/restore. Nothing else in the process gets "contrib" from us.
_FEATURES_LOCK: Final = threading.Lock()


@lru_cache(maxsize=64)
def _mechanism(epsilon: Decimal) -> Measurement:
    """OpenDP's discrete Laplace on one integer count, exactly ``epsilon``-DP for d_in=1.

    The scale is ``1/epsilon`` as a float, raised by an ulp at a time until OpenDP's own
    privacy map — which rounds conservatively — certifies ``map(1) <= epsilon`` compared
    exactly in ``Decimal``. (For epsilon 0.1 the float 10.0 maps to the float 0.1, which is
    0.1000000000000000055…: a hair over the budget, so the scale moves up by a few ulps.)
    """
    _check_epsilon(epsilon)
    # A starting point only (it may round either way); the privacy map has the last word.
    scale = float(Context(prec=40).divide(Decimal(1), epsilon))
    with _FEATURES_LOCK:
        already = "contrib" in GLOBAL_FEATURES
        dp.enable_features("contrib")
        try:
            space = dp.atom_domain(T=_COUNT_TYPE), dp.absolute_distance(T=_COUNT_TYPE)
            for _ in range(_MAX_NUDGES):
                measurement: Measurement = space >> dp.m.then_laplace(scale=scale)
                # OpenDP leaves Measurement.map unannotated; it returns the float bound.
                certified = measurement.map(1)  # type: ignore[no-untyped-call]
                if Decimal(certified) <= epsilon:
                    return measurement
                scale = math.nextafter(scale, math.inf)
        except OpenDPException as exc:
            raise ValueError(f"OpenDP cannot build a Laplace mechanism for {epsilon}") from exc
        finally:
            if not already:
                dp.disable_features("contrib")
    raise ValueError(f"no Laplace scale certifies epsilon {epsilon} for a count")


def noised_count(true_count: int, *, epsilon: Decimal) -> int:
    """``true_count`` plus discrete Laplace noise of scale ``1/epsilon``, clamped at 0.

    ``epsilon``-DP for a change of one customer (sensitivity 1), as OpenDP's privacy map
    certifies (the scale is ``1/epsilon`` raised by the few ulps that takes). Clamping is
    post-processing, so it costs no privacy; it only spares the recipient a negative count.
    """
    if isinstance(true_count, bool) or not isinstance(true_count, int):
        raise TypeError("a count is an int")
    if not 0 <= true_count <= _MAX_COUNT:
        raise ValueError("a count is between 0 and 2**63 - 1")
    _check_epsilon(epsilon)
    value = _mechanism(epsilon)(true_count)
    if not isinstance(value, int):  # pragma: no cover - OpenDP returns i64 as int
        raise TypeError(f"OpenDP returned {type(value).__name__}, not int")
    return max(0, value)


@dataclass(frozen=True, slots=True)
class ReleasedCount:
    """What the recipient is told: a noised count, or that it was suppressed (value 0)."""

    value: int
    suppressed: bool


def released_count(true_count: int, *, epsilon: Decimal, k: int) -> ReleasedCount:
    """Noise first, then suppress when the *noised* count is below ``k``.

    Suppression looks only at the noised count, so the whole release — value and
    ``suppressed`` flag — is post-processing of one ``epsilon``-DP draw (see the module
    docstring for why the true count must not decide it). Charge the budget before
    calling this.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError("k is a positive int")
    noised = noised_count(true_count, epsilon=epsilon)
    if noised < k:
        return ReleasedCount(value=0, suppressed=True)
    return ReleasedCount(value=noised, suppressed=False)


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """An agreement's lifetime privacy budget: ``total`` epsilon, of which ``spent`` is used.

    A value: ``spend`` returns a new budget; the store keeps it per agreement. There is
    no period and no reset — what is spent stays spent for the life of the agreement.
    """

    total: Decimal
    spent: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.total, Decimal) or not isinstance(self.spent, Decimal):
            raise TypeError("privacy budgets are Decimal, never float")
        if not self.total.is_finite() or self.total <= 0:
            raise ValueError("a privacy budget's total is a positive, finite Decimal")
        if not self.spent.is_finite() or not 0 <= self.spent <= self.total:
            raise ValueError("a privacy budget's spent part is between 0 and its total")

    @property
    def remaining(self) -> Decimal:
        return _EXACT.subtract(self.total, self.spent)

    def can_spend(self, epsilon: Decimal) -> bool:
        """Whether ``epsilon`` more fits; spending up to exactly the total is allowed."""
        _check_epsilon(epsilon)
        return _EXACT.add(self.spent, epsilon) <= self.total

    def spend(self, epsilon: Decimal) -> PrivacyBudget:
        """The budget after spending ``epsilon``; ``BudgetExhausted`` if it does not fit."""
        if not self.can_spend(epsilon):
            raise BudgetExhausted(
                f"the agreement's privacy budget has {self.remaining} of {self.total} left; "
                f"a count needs {epsilon}"
            )
        return PrivacyBudget(total=self.total, spent=_EXACT.add(self.spent, epsilon))


def _check_epsilon(epsilon: Decimal) -> None:
    if not isinstance(epsilon, Decimal):
        raise TypeError("epsilon is a Decimal, never float")
    if not epsilon.is_finite() or epsilon <= 0:
        raise ValueError("epsilon is a positive, finite Decimal")
