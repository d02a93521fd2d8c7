"""Retries of idempotent calls: exponential backoff with jitter, Retry-After, one deadline.

Colorizing is idempotent, so a call the service could not serve right now (queue full,
worker died and restarting, connection reset) is worth repeating. Which failures those
are is each transport's business: it marks them ``ServiceError.retryable``. This module
only decides when to try again and when to give up: never after the caller's deadline,
never for a refusal (4xx, or the service's own ``internal`` 500).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from serving.client.base import ServiceError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Tries until the deadline (or ``attempts``, if set); the n-th wait is
    ``backoff_s * 2**(n-1)`` capped at ``max_backoff_s``, times a random factor in [0.5, 1]
    (jitter: clients that failed together do not come back together), and never shorter
    than the server's Retry-After.

    The caller's deadline is the bound that matters: a worker restart took 6 to 27 s here
    (busy 2-core machine), and a burst of 400 callers on a queue of 100 needed more than
    10 tries for some of them (tests/e2e/test_reliability.py). The cap keeps a waiting
    client to one try every 2-4 s, so retries do not pile onto an overloaded service.
    """

    attempts: int | None = None
    backoff_s: float = 0.1
    max_backoff_s: float = 4.0

    def wait_s(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return max(ceiling * rng.uniform(0.5, 1.0), retry_after or 0.0)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def call_with_retries(
    call: Callable[[float], T],
    timeout: float,
    policy: RetryPolicy,
    *,
    on_retry: Callable[[ServiceError], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``call(seconds_left)`` until it returns, raises a final error, or time runs out.

    ``timeout`` is the deadline of the whole call, retries and waits included; each try
    gets what is left of it. A retryable error is raised as is when the tries are spent
    or when the next wait would end past the deadline.
    """
    rng = rng or random.Random()
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        left = deadline - clock()
        try:
            if left <= 0:
                raise ServiceError(504, "timeout", f"no answer within {timeout:g} s")
            return call(left)
        except ServiceError as exc:
            if not exc.retryable or (policy.attempts is not None and attempt >= policy.attempts):
                raise
            wait = policy.wait_s(attempt, exc.retry_after, rng)
            if clock() + wait >= deadline:
                raise
            if on_retry is not None:
                on_retry(exc)
            sleep(wait)
