"""The LLM token budget shared by every process on one store (workers, the API).

``OUTREACH_LLM_DAILY_TOKENS`` is a deployment's budget, not one process's: with four workers and
an API each counting alone, a day could cost five budgets. ``SharedTokens`` keeps the day's
spend in the store's running tallies (``tallies``, name ``llm_tokens``, label the UTC day): a
thread adds what this process spent to it every ``interval`` seconds and reads the total back.
The gateway refuses calls once the total it knows (the store's, as of the last exchange, plus
what this process spent since) reaches the budget, so the whole deployment stops within one
interval of the budget being spent: it can overshoot by what the *other* processes spent
since they last exchanged, and by the calls already in flight.

Why a thread and not a write per call: a worker's model calls happen inside its batch
transaction, and on SQLite that transaction holds the database's only write lock; a second
connection writing from the same thread would wait for itself. When the store does not answer,
the spend stays counted here and is added at the next exchange that succeeds; meanwhile the
budget is judged on what this process knows.

Must not import: openai (the gateway calls in; this module only counts).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from outreach.store.batch import Batch
from outreach.store.store import Store

log = logging.getLogger(__name__)

TALLY = "llm_tokens"  # the tallies' name; the label is the UTC day (YYYY-MM-DD)


class SharedTokens:
    """Per UTC day, the tokens spent by every process on ``store`` (the gateway's
    ``TokenUsage``); ``start()`` begins the exchange every ``interval`` seconds, ``close()``
    ends it after a last one."""

    def __init__(self, store: Store, interval: float = 5.0) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()  # spent here, not yet added to the store
        self._shared: dict[str, int] = {}  # the store's totals as of the last exchange
        self._asked = ""  # the latest day the gateway asked about (read back at each exchange)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # exchanges the store did not answer (in a row)

    def spent(self, day: str) -> int:
        """Tokens spent on ``day`` by every process, as far as this one knows."""
        with self._lock:
            self._asked = max(self._asked, day)
            return self._shared.get(day, 0) + self._pending[day]

    def add(self, day: str, tokens: int) -> None:
        """Count ``tokens`` spent by this process on ``day``."""
        if tokens > 0:
            with self._lock:
                self._pending[day] += tokens

    def sync(self) -> None:
        """Add this process's spend to the store and read the totals back (one transaction);
        raises what the store raised, and then keeps the spend for the next exchange."""
        with self._lock:
            sending = {day: n for day, n in self._pending.items() if n}
            days = set(sending) | ({self._asked} if self._asked else set())
        if not days:
            return

        def exchange(batch: Batch) -> dict[str, int]:
            batch.add_tallies({(TALLY, day): n for day, n in sending.items()})
            return batch.tally_values(TALLY, days)

        totals = self.store.run(exchange)
        with self._lock:
            for day, n in sending.items():
                self._pending[day] -= n  # what was added meanwhile stays pending
                if not self._pending[day]:
                    del self._pending[day]
            self._shared = {day: totals.get(day, 0) for day in days}

    def start(self) -> SharedTokens:
        """Exchange with the store every ``interval`` seconds, in a thread of its own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llm-tokens", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the exchanges, after a last one (this process's spend reaches the store)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sync_quietly()

    def sync_quietly(self) -> bool:
        """``sync``, logging instead of raising when the store does not answer."""
        try:
            self.sync()
        except Exception as exc:  # the database away: the spend stays pending, counted here
            self.failures += 1
            if self.failures == 1 or self.failures % 60 == 0:
                log.warning(
                    "LLM token budget: the store did not answer (%s: %s); counting this "
                    "process's spend alone until it does", type(exc).__name__, exc,
                )  # fmt: skip
            return False
        if self.failures:
            log.info("LLM token budget: the store answers again; spend shared")
        self.failures = 0
        return True

    def _run(self) -> None:
        self.sync_quietly()  # at once: what the others spent, without blocking the caller
        while not self._stop.wait(self.interval):
            self.sync_quietly()
