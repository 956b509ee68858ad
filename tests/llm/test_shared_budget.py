"""The daily token budget is the deployment's: every process on one store counts against it.

Two gateways on two ``Store`` objects of one database stand for two processes (a worker and
the API, or two workers); each counts through its own ``SharedTokens``. SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from livesupport import wait_for
from llm.doubles import FakeClock, OpenAIDouble, text
from pydantic import SecretStr

from outreach.agents.adapters.llm import LLMBudgetExhaustedError, LLMGateway, LLMSettings
from outreach.store import Batch, Store
from outreach.store.tokens import TALLY, SharedTokens

DAY = "2026-03-09"  # FakeClock's day
ASK = [{"role": "user", "content": "hello"}]


def gateway(api: OpenAIDouble, clock: FakeClock, usage: SharedTokens, budget: int) -> LLMGateway:
    settings = LLMSettings(
        api_key=SecretStr("sk-test"), base_url=api.base_url, model="test-model",
        timeout=2.0, max_retries=0, daily_tokens=budget,
    )  # fmt: skip
    return LLMGateway(settings, clock=clock, usage=usage)


@pytest.fixture
def process(database_url: str) -> Iterator[Store]:
    """A second process's store: its own engine and connections on the same database."""
    made = Store(database_url)
    yield made
    made.close()


def stored_total(store: Store, day: str) -> int:
    with store.batch() as batch:
        return batch.tally_values(TALLY, [day]).get(day, 0)


def test_what_one_process_spent_counts_against_every_others_budget(
    api: OpenAIDouble, clock: FakeClock, store: Store, process: Store
) -> None:
    mine, theirs = SharedTokens(store), SharedTokens(process)
    worker, reader = gateway(api, clock, mine, 300), gateway(api, clock, theirs, 300)
    api.script(text("one", tokens=(120, 30)), text("two", tokens=(100, 50)), text("three"))
    worker.complete("planner", ASK)
    worker.complete("composer", ASK)
    assert worker.tokens_today == 300  # counted here before any exchange
    assert reader.tokens_today == 0  # the other process does not know yet
    mine.sync()
    theirs.sync()
    assert stored_total(store, DAY) == 300
    assert reader.tokens_today == 300
    with pytest.raises(LLMBudgetExhaustedError, match="300 of 300 tokens on 2026-03-09"):
        reader.complete("replies", ASK)
    assert len(api.completions()) == 2  # refused before any request
    clock.advance(24 * 3600)  # a new UTC day: a new budget for everyone
    reader.complete("replies", ASK)
    theirs.sync()
    assert (stored_total(store, DAY), stored_total(store, "2026-03-10")) == (300, 150)


def test_spend_added_while_an_exchange_is_under_way_is_kept_for_the_next(
    store: Store, process: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = SharedTokens(store), SharedTokens(process)
    mine.add(DAY, 70)
    theirs.add(DAY, 30)
    exchange = store.run

    def call_finishing_meanwhile(work: Callable[[Batch], int]) -> int:
        mine.add(DAY, 5)  # a model call of the batch thread ends while the exchange runs
        return exchange(work)

    monkeypatch.setattr(store, "run", call_finishing_meanwhile)
    mine.sync()
    monkeypatch.undo()
    assert (stored_total(store, DAY), mine.spent(DAY)) == (70, 75)  # 5 still pending
    theirs.sync()
    assert theirs.spent(DAY) == 100
    mine.sync()
    assert (mine.spent(DAY), stored_total(store, DAY)) == (105, 105)
    mine.sync()  # nothing pending: adds nothing, reads the total again
    assert stored_total(store, DAY) == 105


def test_the_exchange_thread_shares_spend_without_being_asked(store: Store, process: Store) -> None:
    mine = SharedTokens(store, interval=0.05).start()
    theirs = SharedTokens(process, interval=0.05).start()
    try:
        assert theirs.spent(DAY) == 0  # asked once: the thread reads this day back
        mine.add(DAY, 42)
        wait_for(lambda: theirs.spent(DAY) == 42, 10, "the other process's spend")
    finally:
        mine.close()
        theirs.close()
    mine.add(DAY, 8)
    mine.close()  # a last exchange on close: nothing a process spent is left out
    assert stored_total(store, DAY) == 50


def test_a_store_that_does_not_answer_leaves_the_spend_counted_here_until_it_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "not-yet"
    store = Store(f"sqlite:///{folder}/outreach.db")  # the folder does not exist: no database
    tokens = SharedTokens(store)
    tokens.add(DAY, 120)
    with caplog.at_level(logging.WARNING, logger="outreach.store.tokens"):
        assert tokens.sync_quietly() is False
        assert tokens.sync_quietly() is False
    warnings = [r for r in caplog.records if "did not answer" in r.message]
    assert len(warnings) == 1  # once, not at every exchange
    assert tokens.spent(DAY) == 120  # the budget is still judged on this process's spend
    folder.mkdir()
    store.migrate()
    assert tokens.sync_quietly() is True
    assert (tokens.spent(DAY), stored_total(store, DAY)) == (120, 120)
    store.close()
