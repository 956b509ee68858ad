"""STOP holds on every path (hypothesis), in the core and at the dispatcher.

Core: three New York customers (``cus_a`` and ``cus_b`` share one number) get late parcels and
failed payments at any local hour (quiet hours defer them), reply STOP/START/HELP or anything
in any case, padding and trailing punctuation, have their SMS reported (delivered, 30003 and
30008 resends, 30006 unusable, 21610 opted out) and change number and consent; the steps are
minutes to hours apart so that STOP lands between a report and its resend, and while a message
waits for 8:00. An inbound SMS reaches every customer whose number it came from (as the Twilio
webhook fans it out). The shipped rules replay it in order, then the timers drain.
Properties, by the core's clock (log order): no non-compliance SMS for a customer after a STOP
(or a 21610) reached them and before a START did; one STOP confirmation per STOP that changed
the state, none otherwise; compliance replies only ever answer a reply.

Dispatcher: whatever was decided, an address suppressed in the store (written by the webhook)
receives nothing but compliance replies, and each refused row is reported exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import RULES, Run, make_event, profile, run_events

from outreach.agents.connectors import FakeConnector
from outreach.decisions import Delivery
from outreach.events import MessageStatus, event_from_obj, parse_event
from outreach.outbound.channels import FileChannel
from outreach.rulebook import RuleBook, load_rulebook
from outreach.store import Store
from outreach.store.contacts import Contacts
from outreach.streams.dispatcher import Dispatcher, DispatcherOptions

PHONES = ("+14155550100", "+14155550101", "+14155550102")
HOME = {"cus_a": 0, "cus_b": 0, "cus_c": 1}  # index into PHONES; cus_a and cus_b share one
CUSTOMERS = sorted(HOME)
PROFILES_AT = "2026-03-08T12:00:00Z"
FIRST_STEP = datetime(2026, 3, 9, tzinfo=UTC)  # 20:00 EDT; plus 0..23 hours
PROMISED = "2026-03-12T15:00:00Z"

# written out here, not taken from outreach.outbound.keywords: a word dropped there must fail
STOP_WORDS = ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout")
START_WORDS = ("start", "unstop")
HELP_REPLIES = ("help", "Info", " HELP? ")
OTHER_REPLIES = ("yes", "NO", "stopp", "where is it?", "")
# opt-out language, not a keyword: suppressed and confirmed like STOP (then a person reads it)
OPT_OUT_PHRASES = ("stop texting me", "STOP STOP", "please unsubscribe me", "leave me alone")
CASES = {
    "lower": str.lower,
    "upper": str.upper,
    "title": str.title,
    "mixed": lambda w: "".join(c.upper() if i % 2 else c for i, c in enumerate(w)),
}
PADS = ("", " ", "  ", "\t", "\n", " \r\n")
PUNCTUATION = ("", ".", "!", "?", "!!", ",", ";", ":", "?!", " .")
REPORTS = (
    ("delivered", None),
    ("undelivered", "30003"),  # carrier hiccup: sent again after a backoff
    ("undelivered", "30008"),
    ("undelivered", "30006"),  # unusable: suppressed as such, sent again by email
    ("failed", "21610"),  # the number opted out at the carrier
)
DECLINES = ("insufficient_funds", "do_not_honor", "expired_card")
GAPS = (0, 1, 2, 3, 4, 6, 30, 120, 400, 700)  # minutes between steps; 30003 resends: 2.5-5 min


def dress(word: str, case: str, before: str, punctuation: str, after: str) -> str:
    """``word`` as a person might type it."""
    return f"{before}{CASES[case](word)}{punctuation}{after}"


def keyword(words: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(
        dress,
        st.sampled_from(words),
        st.sampled_from(sorted(CASES)),
        st.sampled_from(PADS),
        st.sampled_from(PUNCTUATION),
        st.sampled_from(PADS),
    )


customers = st.sampled_from(CUSTOMERS)
stops = keyword(STOP_WORDS).map(lambda body: ("stop", body))
replies = st.one_of(
    stops,
    stops,  # twice as likely as each of the others
    keyword(START_WORDS).map(lambda body: ("start", body)),
    st.sampled_from(HELP_REPLIES).map(lambda body: ("help", body)),
    st.sampled_from(OPT_OUT_PHRASES).map(lambda body: ("stop", body)),
    st.sampled_from(OTHER_REPLIES).map(lambda body: ("other", body)),
)
operations = st.one_of(
    st.tuples(st.just("parcel"), customers),
    st.tuples(st.just("payment"), customers, st.sampled_from(DECLINES)),
    st.tuples(st.just("reply"), st.integers(0, len(PHONES) - 1), replies),
    st.tuples(st.just("reply"), st.integers(0, 1), stops),  # a number someone has
    st.tuples(st.just("report"), customers, st.integers(0, 7), st.sampled_from(REPORTS)),
    st.tuples(
        st.just("profile"),
        customers,
        st.sampled_from([0, 1, 2, None]),
        st.booleans(),  # transactional SMS consent
    ),
)
steps = st.lists(st.tuples(st.sampled_from(GAPS), operations), min_size=1, max_size=30)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the core --------------------------------------------------------------------------------


@dataclass
class Replay:
    """One interleaving replayed, with what the property found wrong."""

    run: Run
    phone: dict[str, str | None] = field(
        default_factory=lambda: {c: PHONES[i] for c, i in HOME.items()}
    )
    stopped: set[str] = field(default_factory=set)  # by a STOP or a 21610, not lifted since
    violations: list[str] = field(default_factory=list)
    seq: int = 0

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        return self.run.log.deliveries

    def check(self, since: int, what: str, answers: dict[str, Counter[str]] | None = None) -> None:
        """The deliveries handed out from ``since`` on, while ``what`` happened."""
        got: dict[str, Counter[str]] = {}
        for d in self.deliveries[since:]:
            who = d["customer_id"]
            if d["compliance"]:
                got.setdefault(who, Counter())[d["template"]] += 1
                if d["channel"] != "sms" or d["purpose"] != "transactional":
                    self.violations.append(f"{what}: compliance reply {d} is not a plain SMS")
            elif d["channel"] == "sms" and who in self.stopped:
                self.violations.append(f"{what}: SMS {d['message_id']} to stopped {who} {d['to']}")
        if got != (answers or {}):
            self.violations.append(f"{what}: compliance replies {got}, expected {answers or {}}")

    def feed(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.run.replayer.feed_event(event_from_obj(event))

    def step(self, at: datetime, operation: tuple[Any, ...]) -> None:
        """Fire the timers due by ``at``, then perform ``operation`` at ``at``."""
        since = len(self.deliveries)
        self.run.replayer.fire_until(at.timestamp())
        self.check(since, f"timers due by {at:%m-%d %H:%M}Z")
        since = len(self.deliveries)
        what = f"{operation} at {at:%m-%d %H:%M}Z"
        answers = getattr(self, f"_{operation[0]}")(at, *operation[1:])
        self.check(since, what, answers)

    def _parcel(self, at: datetime, customer: str) -> None:
        self.seq += 1
        self.feed(make_event(
            "shipment.updated", at, customer, shipment_id=f"shp_{self.seq}",
            order_id=f"ORD-{self.seq}", carrier="ups", status="in_transit",
            promised_delivery=PROMISED, estimated_delivery="2026-03-14T15:00:00Z",
        ))  # fmt: skip

    def _payment(self, at: datetime, customer: str, decline: str) -> None:
        self.seq += 1
        self.feed(make_event(
            "payment.failed", at, customer, payment_id=f"pay_{self.seq}",
            invoice_id=f"in_{self.seq}", amount=2900, currency="USD", decline_code=decline,
            attempt=1,
        ))  # fmt: skip

    def _reply(
        self, at: datetime, phone: int, reply: tuple[str, str]
    ) -> dict[str, Counter[str]] | None:
        kind, body = reply
        number = PHONES[phone]
        reached = [c for c in CUSTOMERS if self.phone[c] == number]  # the webhook's fan-out
        answers: dict[str, Counter[str]] = {}
        if kind == "stop":
            for c in reached:
                if c not in self.stopped:  # the first STOP is confirmed, a repeat is not
                    answers[c] = Counter({"keyword_stop": 1})
            self.stopped.update(reached)  # before checking: nothing may go from here on
        elif kind == "start":
            self.stopped.difference_update(reached)
            answers = {c: Counter({"keyword_start": 1}) for c in reached}
        elif kind == "help":
            answers = {c: Counter({"keyword_help": 1}) for c in reached}
        self.seq += 1
        for c in reached:  # one event id for all, as the webhook makes them
            self.feed(make_event(
                "message.received", at, c, event_id=f"twilio:SM{self.seq}", channel="sms",
                from_address=number, body=body, provider="twilio",
            ))  # fmt: skip
        return answers

    def _report(
        self, at: datetime, customer: str, pick: int, report: tuple[str, str | None]
    ) -> None:
        sms = [
            d
            for d in self.deliveries
            if d["customer_id"] == customer and d["channel"] == "sms" and not d["compliance"]
        ]
        if not sms:
            return
        state, code = report
        sent = sms[pick % len(sms)]
        self.feed(make_event(
            "message.status", at, customer, message_id=sent["message_id"], channel="sms",
            status=state, attempt=sent["attempt"], provider="twilio", error_code=code,
        ))  # fmt: skip
        if code == "21610":
            self.stopped.add(customer)

    def _profile(self, at: datetime, customer: str, phone: int | None, sms: bool) -> None:
        event = profile(
            at, customer, phone=None if phone is None else PHONES[phone],
            email=f"{customer}@example.com", sms=(sms, False),
        )  # fmt: skip
        if phone is None:
            event["data"]["phone"] = None  # an explicit null clears the number
        self.phone[customer] = None if phone is None else PHONES[phone]
        self.feed(event)


def replay_steps(book: RuleBook, hour: int, plan: list[tuple[int, tuple[Any, ...]]]) -> Replay:
    """Replay ``plan`` (minutes after the previous step, operation) from ``hour`` UTC on."""
    start = [
        profile(PROFILES_AT, c, phone=PHONES[i], email=f"{c}@example.com") for c, i in HOME.items()
    ]
    replay = Replay(run_events(book, start, drain=False))
    at = FIRST_STEP + timedelta(hours=hour)
    for gap, operation in plan:
        at += timedelta(minutes=gap)
        replay.step(at, operation)
    since = len(replay.deliveries)
    replay.run.replayer.drain()
    replay.check(since, "timers drained at the end")
    return replay


@functools.cache
def shipped_rules() -> RuleBook:
    """The shipped rules (not the ``book`` fixture: hypothesis would print its repr, 300 kB,
    with every falsifying example)."""
    return load_rulebook(RULES)


STOP_DURING_RESEND = [
    (0, ("parcel", "cus_c")),  # 14:00 EDT: sent by SMS at once
    (1, ("report", "cus_c", 0, ("undelivered", "30003"))),  # sent again in 2.5-5 minutes
    (1, ("reply", 1, ("stop", " Stop. "))),
]
STOP_WHILE_DEFERRED = [
    (0, ("payment", "cus_a", "insufficient_funds")),  # 22:00 EDT: waits for 8:00
    (30, ("reply", 0, ("stop", "QUIT!"))),  # reaches cus_a and cus_b
    (700, ("parcel", "cus_b")),
]

LATE_REPORT_AFTER_STOP = [
    (0, ("parcel", "cus_c")),  # 14:00 EDT: sent by SMS at once
    (1, ("reply", 1, ("stop", "STOP"))),
    (5, ("report", "cus_c", 0, ("undelivered", "30006"))),  # about the SMS sent before it
    (60, ("profile", "cus_c", 2, True)),  # a new number: an opt-out stays with the person
    (60, ("parcel", "cus_c")),
]


@PROPERTY
@given(hour=st.integers(0, 23), plan=steps)
@example(hour=18, plan=STOP_DURING_RESEND)
@example(hour=2, plan=STOP_WHILE_DEFERRED)
@example(hour=18, plan=LATE_REPORT_AFTER_STOP)
def test_no_sms_reaches_a_customer_after_their_stop(
    hour: int, plan: list[tuple[int, tuple[Any, ...]]]
) -> None:
    replay = replay_steps(shipped_rules(), hour, plan)
    assert replay.violations == []


def test_a_stop_between_a_carrier_failure_and_its_resend_moves_the_resend_to_email(
    book: RuleBook,
) -> None:
    replay = replay_steps(book, 18, STOP_DURING_RESEND)
    assert replay.violations == []
    parcel = [d for d in replay.deliveries if d["template"] == "shipment_delay"]
    assert [(d["channel"], d["attempt"]) for d in parcel] == [("sms", 1), ("email", 2)]
    # the resend was judged again when due (after the STOP): the path the property relies on
    again = replay.run.log.messages[-1]
    assert again["message_id"] == parcel[0]["message_id"]
    assert again["send_at"] > "2026-03-09T18:02:00Z"  # the STOP's time
    assert again["checks"][:2] == [
        {"check": "resend", "result": "used", "detail": "carrier retry due"},
        {"check": "channel", "result": "fail", "detail": "sms: suppressed (stop)"},
    ]


def test_a_stop_while_a_message_waits_for_8am_sends_it_by_email(book: RuleBook) -> None:
    replay = replay_steps(book, 2, STOP_WHILE_DEFERRED)
    assert replay.violations == []
    mine = [m for m in replay.run.log.messages if m["rule_id"] == "payment-recovery"]
    assert [(m["status"], m["channel"]) for m in mine] == [("deferred", "sms"), ("sent", "email")]
    assert mine[-1]["send_at"] == "2026-03-09T12:00:00Z"  # judged again at 8:00 EDT
    stops = [d for d in replay.deliveries if d["template"] == "keyword_stop"]
    assert sorted(d["customer_id"] for d in stops) == ["cus_a", "cus_b"]
    assert [d["channel"] for d in replay.deliveries if d["customer_id"] == "cus_b"] == [
        "sms",
        "email",
    ]


def test_a_late_unusable_report_does_not_undo_a_stop(book: RuleBook) -> None:
    replay = replay_steps(book, 18, LATE_REPORT_AFTER_STOP)
    assert replay.run.replayer.states["cus_c"].contact.suppressed == {"sms": "stop"}
    second = [d for d in replay.deliveries if d["template"] == "shipment_delay"][-1]
    assert (second["channel"], second["attempt"]) == ("email", 1)  # not SMS to the new number
    assert replay.violations == []


# -- the dispatcher --------------------------------------------------------------------------

ADDRESSES = {
    "sms": ("+14155550100", "+14155550101", "+14155550102"),
    "email": ("ann@example.com", "bob@example.com"),
}
LISTS = ("marketing", "news")


def written(channel: str, address: str, variant: int) -> str:
    """``address`` as some producer wrote it (case and spaces vary; the meaning does not)."""
    if variant == 0:
        return address
    if channel == "email":
        return f" {address.upper()} " if variant == 1 else address.title()
    return f" {address}\t"


def canonical(channel: str, address: str) -> str:
    address = address.strip()
    return address.lower() if channel == "email" else address


@st.composite
def outbox(draw: st.DrawFn) -> list[Delivery]:
    """Deliveries as the core would decide them, each message once."""
    made = []
    for n in range(draw(st.integers(1, 12))):
        channel = draw(st.sampled_from(sorted(ADDRESSES)))
        purpose = draw(st.sampled_from(["transactional", "marketing"]))
        compliance = channel == "sms" and purpose == "transactional" and draw(st.booleans())
        list_id = (
            draw(st.sampled_from(LISTS)) if channel == "email" and purpose == "marketing" else None
        )
        to = written(channel, draw(st.sampled_from(ADDRESSES[channel])), draw(st.integers(0, 2)))
        made.append(Delivery(
            message_id=f"msg_{n}", customer_id=f"cus_{n % 3}", channel=channel, to=to,
            purpose=purpose, subject=None if channel == "sms" else "Hello", body="Acme: hi",
            template="keyword_stop" if compliance else "note", compliance=compliance,
            attempt=draw(st.integers(1, 3)), list_id=list_id,
        ))  # fmt: skip
    return made


suppressions = st.lists(
    st.one_of(
        st.tuples(st.just("sms"), st.sampled_from(ADDRESSES["sms"]), st.just("")),
        st.tuples(
            st.just("email"), st.sampled_from(ADDRESSES["email"]), st.sampled_from(("", *LISTS))
        ),
    ).flatmap(
        lambda s: st.tuples(st.just(s), st.integers(0, 2), st.sampled_from(["stop", "bounce"]))
    ),
    max_size=6,
)


def refused(delivery: Delivery, suppressed: set[tuple[str, str, str]]) -> bool:
    """Whether the dispatcher must refuse ``delivery`` (written from the contract, not the code)."""
    if delivery.compliance:
        return False
    address = canonical(delivery.channel, delivery.to)
    lists = [""]
    if delivery.purpose == "marketing" and delivery.list_id:
        lists.append(delivery.list_id)
    return any((delivery.channel, address, x) in suppressed for x in lists)


async def dispatch(store: Store, messages: Path) -> Dispatcher:
    dispatcher = Dispatcher(store, FakeConnector(), FileChannel(messages), DispatcherOptions())
    assert await dispatcher.run_once(1_000.0) == len(store.outbox_rows())
    return dispatcher


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(deliveries=outbox(), suppress=suppressions)
def test_the_dispatcher_sends_nothing_but_compliance_replies_to_a_suppressed_address(
    deliveries: list[Delivery], suppress: list[tuple[tuple[str, str, str], int, str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/outreach.db")
        try:
            store.migrate()
            contacts = Contacts(store)
            for (channel, address, list_id), variant, reason in suppress:
                contacts.suppress(channel, written(channel, address, variant), reason, list_id)
            rows = [
                (d.key, "delivery", d.customer_id, d.message_id, d.model_dump_json().encode(), 0.0)
                for d in deliveries
            ]
            store.run(lambda b: b.add_outbox(rows))
            dispatcher = asyncio.run(dispatch(store, Path(tmp) / "messages.jsonl"))
            sent = [
                orjson.loads(x) for x in (Path(tmp) / "messages.jsonl").read_bytes().splitlines()
            ]
            records: list[Any] = []
            store.take_records(1000, records.extend)
            statuses = {r["idempotency_key"]: r for r in store.outbox_rows()}
        finally:
            store.close()
    suppressed = {s for s, _, _ in suppress}
    stopped = {canonical("sms", a) for (c, a, x), _, _ in suppress if c == "sms" and x == ""}
    assert [
        line["key"]
        for line in sent
        if line["channel"] == "sms"
        and not line["compliance"]
        and canonical("sms", line["to"]) in stopped
    ] == []
    no = [d for d in deliveries if refused(d, suppressed)]
    assert sorted(line["key"] for line in sent) == sorted(d.key for d in deliveries if d not in no)
    assert dispatcher.stats.suppressed == len(no)
    assert {k: r["status"] for k, r in statuses.items()} == {
        d.key: "failed" if d in no else "done" for d in deliveries
    }
    reports = [(r.topic, r.key, parse_event(r.value)) for r in records]
    assert Counter(e.data.message_id for _, _, e in reports) == Counter(d.message_id for d in no)
    by_message = {d.message_id: d for d in no}
    for topic, key, event in reports:
        d = by_message[event.data.message_id]
        assert isinstance(event, MessageStatus)
        assert (topic, key) == ("customers", d.customer_id.encode())
        assert event.customer_id == d.customer_id
        assert (event.data.status, event.data.error_code, event.data.attempt) == (
            "failed", "suppressed", d.attempt,
        )  # fmt: skip
