"""Login throttling: failed passwords per user and per address, and argon2 work at once.

Checking a password costs argon2's 64 MiB and about 50 ms, so a flood of guesses could wear
the server out. Failures are counted in a sliding window per (project, username) and per
client address; past the limit a login is refused with 429 and the seconds to wait. A
success clears its user's count, not its address's. At most HASHING_AT_ONCE hashes run at
the same time. The counts live in this process: each server process keeps its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from tuneyard.errors import TooManyRequests

WINDOW_SECONDS = 300.0
FAILURES_PER_USER = 5
FAILURES_PER_ADDRESS = 20
HASHING_AT_ONCE = 4
HASHING_WAIT_SECONDS = 5.0
# Beyond this many users and addresses with recent failures, the longest quiet go first.
MAX_KEYS = 100_000


class _FailureWindow:
    """The times of the last `limit` failures of each key."""

    def __init__(self, limit: int):
        self.limit = limit
        self.failures: dict[str, deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        times = self.failures.get(key)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + WINDOW_SECONDS - now)

    def add(self, key: str, now: float) -> None:
        times = self.failures.pop(key, None) or deque(maxlen=self.limit)
        times.append(now)
        self.failures[key] = times  # re-inserted last: the dict runs from quietest to latest
        while len(self.failures) > MAX_KEYS:
            del self.failures[next(iter(self.failures))]

    def clear(self, key: str) -> None:
        self.failures.pop(key, None)


class LoginThrottle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = _FailureWindow(FAILURES_PER_USER)
        self._addresses = _FailureWindow(FAILURES_PER_ADDRESS)
        self._hashing = threading.BoundedSemaphore(HASHING_AT_ONCE)

    @staticmethod
    def _user(project_code: str, username: str) -> str:
        return f"{project_code}\n{username}"

    def check(self, project_code: str, username: str, address: str) -> None:
        """Refuse (429) a user or an address with too many recent failures."""
        now = time.monotonic()
        with self._lock:
            user_wait = self._users.wait(self._user(project_code, username), now)
            address_wait = self._addresses.wait(address, now)
        if user_wait:
            seconds = math.ceil(user_wait)
            raise TooManyRequests(
                f"Too many wrong passwords for user '{username}' in project {project_code}; "
                f"try again in {seconds} seconds.",
                seconds,
            )
        if address_wait:
            seconds = math.ceil(address_wait)
            raise TooManyRequests(
                f"Too many failed logins from your address; try again in {seconds} seconds.",
                seconds,
            )

    def failed(self, project_code: str, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._users.add(self._user(project_code, username), now)
            self._addresses.add(address, now)

    def succeeded(self, project_code: str, username: str) -> None:
        with self._lock:
            self._users.clear(self._user(project_code, username))

    @contextmanager
    def hashing(self) -> Iterator[None]:
        """A slot for one argon2 hash or check; 429 when none frees up soon."""
        if not self._hashing.acquire(timeout=HASHING_WAIT_SECONDS):
            raise TooManyRequests(
                "The server is checking many passwords at once; try again in a few seconds.", 5
            )
        try:
            yield
        finally:
            self._hashing.release()

    def forget(self) -> None:
        """Drop every count (a fresh start, as after a restart)."""
        with self._lock:
            self._users.failures.clear()
            self._addresses.failures.clear()


throttle = LoginThrottle()
