"""The patience of every wait loop: a deadline, a growing poll interval, periodic checks.

>>> patience = Patience(timeout=5)
>>> while not done():                       # doctest: +SKIP
...     patience.check(lambda: "3 tasks not done")
...     patience.sleep()
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Patience:
    """Raise ``TimeoutError`` past ``timeout``, run ``every_half_second`` now and then, back off."""

    def __init__(
        self,
        timeout: float | None,
        every_half_second: Callable[[], object] | None = None,
        first_delay: float = 0.0005,
        max_delay: float = 0.02,
    ):
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.every_half_second = every_half_second
        self.next_check = time.monotonic() + 0.5
        self.first_delay = self.delay = first_delay
        self.max_delay = max_delay

    def check(self, what_is_left: Callable[[], str]) -> None:
        """Raise if the deadline passed (the message says what is left); run the periodic check."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeoutError(f"{what_is_left()} after {self.timeout} s")
        if self.every_half_second is not None and now > self.next_check:
            self.next_check = now + 0.5
            self.every_half_second()

    def progressed(self) -> None:
        """Something happened: poll sooner again (halving the interval, so a steady
        stream of results does not make the loop spin)."""
        self.delay = max(self.first_delay, self.delay / 2)

    def sleep(self) -> None:
        """Wait before the next poll, a little longer each time nothing happens."""
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        time.sleep(max(0.0, min(self.delay, remaining)) if remaining is not None else self.delay)
        self.delay = min(self.delay * 1.5, self.max_delay)

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline
