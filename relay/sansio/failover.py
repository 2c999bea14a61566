"""Failover at session start: which upstreams to try, in which order, and when to move on.

A deployment may list several upstreams. Before the client is accepted, the
edge asks :func:`plan_attempts` for an order, tries each upstream in turn
while the failures are ones another upstream might not share
(:func:`fails_over`), and stops at the first success. An established session
is never moved: Azure's session state cannot be migrated.

The order is weighted and random, so load spreads by weight: an upstream of
weight 2 is tried first twice as often as one of weight 1. It is deterministic
given the random source, which is passed in like the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from relay.sansio.breaker import Breaker


__all__ = [
    "Plan",
    "fails_over",
    "plan_attempts",
    "retry_after_seconds",
    "weighted_order",
]

Random = Callable[[], float]
"""A source of floats in ``[0, 1)``, such as :func:`random.random`."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The upstreams to try for one session start, by index, in order."""

    order: tuple[int, ...]
    """Indexes to try in turn; empty only when every upstream is held."""
    forced: bool = False
    """No breaker allowed an attempt: ``order`` is the one upstream whose
    cool-down ends first, to be tried anyway rather than failing untried."""
    held_until: float | None = None
    """With an empty ``order``: when the first ``Retry-After`` hold ends."""
    held_status: int | None = None
    """With an empty ``order``: the status that came with that hold."""


def weighted_order(weights: Sequence[int], random: Random) -> list[int]:
    """A random order of ``range(len(weights))``, heavier indexes earlier more often.

    Draws without replacement: each position takes index ``i`` with
    probability ``weights[i]`` over the weights still in play, using one value
    of ``random`` per position. ``random`` always returning 0 keeps the
    configured order.

    Raises:
        ValueError: a weight below 1.
    """
    if any(weight < 1 for weight in weights):
        raise ValueError("weights must be >= 1")
    remaining = list(range(len(weights)))
    order: list[int] = []
    while remaining:
        total = sum(weights[index] for index in remaining)
        point = random() * total
        chosen = remaining[-1]  # float rounding can put `point` past the last bound
        for index in remaining:
            point -= weights[index]
            if point < 0:
                chosen = index
                break
        remaining.remove(chosen)
        order.append(chosen)
    return order


def plan_attempts(
    breakers: Sequence[Breaker],
    weights: Sequence[int],
    now: float,
    random: Random,
) -> Plan:
    """The order in which to try the upstreams whose breakers are ``breakers``.

    Upstreams whose breaker allows an attempt come in :func:`weighted_order`.
    If none does, the one whose cool-down ends first (ties: the first listed)
    is tried anyway, unless a ``Retry-After`` holds it: held upstreams are
    never tried. If every upstream is held, the plan is empty and says when
    the first hold ends.

    Raises:
        ValueError: no breakers, or not one weight per breaker.
    """
    if len(breakers) != len(weights) or not breakers:
        raise ValueError("one weight per breaker, and at least one breaker")
    available = [i for i, breaker in enumerate(breakers) if breaker.available(now)]
    if available:
        picked = weighted_order([weights[i] for i in available], random)
        return Plan(tuple(available[position] for position in picked))
    unheld = [i for i, breaker in enumerate(breakers) if not breaker.held(now)]
    if unheld:
        first = min(unheld, key=lambda i: breakers[i].ready_at())
        return Plan((first,), forced=True)
    held = min(breakers, key=lambda breaker: breaker.hold_until)
    return Plan((), held_until=held.hold_until, held_status=held.hold_status)


def fails_over(upstream_status: int) -> bool:
    """Whether a refusal with ``upstream_status`` counts against that upstream and moves on.

    5xx and 429 mean the upstream cannot serve now; 401 and 403 mean the
    relay's credentials are wrong for *that* upstream (an operator problem
    another upstream may not share). 400, 404 and the other 4xx judge the
    client's request, which every upstream would judge alike: they are
    answered at once, as the only upstream's would be.
    """
    return upstream_status >= 500 or upstream_status in (401, 403, 429)


def retry_after_seconds(value: str | None, *, now_epoch: float) -> float | None:
    """The delay a ``Retry-After`` value asks for, in seconds (RFC 9110 §10.2.3).

    Accepts delay-seconds or an HTTP-date (compared with ``now_epoch``, the
    Unix time); a date in the past is 0. ``None`` when absent or malformed.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        date = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if date.tzinfo is None:
        return None
    delay = date.timestamp() - now_epoch
    return max(0.0, delay) if math.isfinite(delay) else None
