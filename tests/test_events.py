"""The input event contract: valid examples, rejections that name the field, partial profile
updates, the exported JSON Schemas, and a JSON round-trip property."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from outreach.cli import app
from outreach.events import (
    ENGINE_TYPES,
    EVENT_TYPES,
    MODELS,
    PUBLIC_TYPES,
    CustomerUpdated,
    InvalidEventError,
    event_from_obj,
    json_schemas,
    parse_event,
)
from outreach.rules.state import Profile

AT = "2026-03-02T10:00:00Z"


def envelope(type_: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "event_id": "evt_01HX",
        "type": type_,
        "customer_id": "cus_42",
        "occurred_at": AT,
        "source": "billing",
        "schema_version": 1,
        "data": data,
        **extra,
    }


# One realistic example per type, every optional field filled where there is one.
EXAMPLES: dict[str, dict[str, Any]] = {
    "customer.updated": envelope(
        "customer.updated",
        {
            "email": "ann@example.com",
            "phone": "+14155550100",
            "timezone": "America/New_York",
            "locale": "en-US",
            "tier": "premium",
            "consent": {
                "sms": {"transactional": True, "marketing": False},
                "email": {"transactional": True, "marketing": True},
            },
        },
    ),
    "shipment.updated": envelope(
        "shipment.updated",
        {
            "shipment_id": "shp_9",
            "order_id": "ord_1001",
            "carrier": "UPS",
            "status": "exception",
            "promised_delivery": "2026-03-04T18:00:00-05:00",
            "estimated_delivery": "2026-03-06T18:00:00-05:00",
            "exception_code": "address_not_found",
            "order_value": {"amount": 12999, "currency": "USD"},
        },
    ),
    "payment.failed": envelope(
        "payment.failed",
        {
            "payment_id": "py_3",
            "invoice_id": "in_1029",
            "amount": 2900,
            "currency": "EUR",
            "decline_code": "insufficient_funds",
            "attempt": 2,
        },
    ),
    "payment.succeeded": envelope(
        "payment.succeeded",
        {"payment_id": "py_4", "invoice_id": "in_1029", "amount": 2900, "currency": "EUR"},
    ),
    "usage.reported": envelope(
        "usage.reported",
        {
            "metric": "api_calls",
            "value": 1234.5,
            "period_start": "2026-03-01T00:00:00Z",
            "period_end": "2026-03-02T00:00:00Z",
        },
    ),
    "renewal.upcoming": envelope(
        "renewal.upcoming",
        {
            "subscription_id": "sub_77",
            "plan": "Pro annual",
            "renews_at": "2026-03-14T00:00:00+01:00",
            "amount": 29900,
            "currency": "GBP",
            "auto_renew": False,
        },
    ),
    "renewal.renewed": envelope("renewal.renewed", {"subscription_id": "sub_77", "plan": "Pro"}),
    "renewal.cancelled": envelope(
        "renewal.cancelled", {"subscription_id": "sub_77", "plan": "Pro"}
    ),
    "contact.suppressed": envelope(
        "contact.suppressed", {"channel": "sms", "reason": "stop", "address": "+14155550100"}
    ),
    "contact.unsuppressed": envelope(
        "contact.unsuppressed", {"channel": "email", "reason": "resubscribe"}
    ),
    "message.status": envelope(
        "message.status",
        {
            "message_id": "msg_1",
            "channel": "sms",
            "status": "undelivered",
            "provider": "twilio",
            "provider_id": "SM123",
            "error_code": "30003",
        },
    ),
    "message.received": envelope(
        "message.received",
        {"channel": "sms", "from_address": "+14155550100", "body": "STOP", "provider": "twilio"},
    ),
    "timer.fired": envelope("timer.fired", {"timer_id": "tmr_1", "due_at": AT}),
    "action.status": envelope(
        "action.status",
        {
            "action_id": "act_1",
            "tool": "grant_credit",
            "status": "failed",
            "detail": "the system refused: account closed",
            "idempotency_key": "eff_1",
        },
    ),  # fmt: skip
    "approval.decided": envelope(
        "approval.decided", {"action_id": "act_1", "decision": "approve", "by": "alice"}
    ),
}
PUBLIC = [m.model_fields["type"].annotation.__args__[0] for m in PUBLIC_TYPES]  # type: ignore[union-attr]


def problems(obj: Any) -> list[str]:
    """The problems ``parse_event`` reports for ``obj`` sent as JSON (or raw text/bytes)."""
    raw = obj if isinstance(obj, str | bytes) else json.dumps(obj)
    with pytest.raises(InvalidEventError) as info:
        parse_event(raw)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def altered(type_: str, **changes: Any) -> dict[str, Any]:
    """The example of ``type_`` with data fields changed (``None`` value: field removed)."""
    event = copy.deepcopy(EXAMPLES[type_])
    for name, value in changes.items():
        if value is None:
            del event["data"][name]
        else:
            event["data"][name] = value
    return event


# --- valid examples ---------------------------------------------------------------------------


def test_the_examples_cover_every_type() -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES) == set(MODELS)
    assert len(PUBLIC) == 8 and len(ENGINE_TYPES) == 7


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_every_type_validates_from_json_and_from_a_dict(type_: str) -> None:
    example = EXAMPLES[type_]
    from_json = parse_event(json.dumps(example))
    assert type(from_json) is MODELS[type_]
    assert from_json.type == type_ and from_json.customer_id == "cus_42"
    assert from_json.occurred_at == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert (
        from_json.data.model_dump(mode="json", exclude_unset=True).keys() == example["data"].keys()
    )
    assert event_from_obj(example) == from_json
    assert parse_event(json.dumps(example).encode()) == from_json


def test_optional_envelope_fields_have_defaults() -> None:
    bare = {
        k: v
        for k, v in EXAMPLES["renewal.renewed"].items()
        if k not in ("source", "schema_version")
    }
    event = parse_event(json.dumps(bare))
    assert event.source is None and event.schema_version == 1


def test_values_are_normalised() -> None:
    event = parse_event(json.dumps(altered("customer.updated", locale="fr_ca")))
    assert isinstance(event, CustomerUpdated) and event.data.locale == "fr-CA"
    shipment = parse_event(json.dumps(EXAMPLES["shipment.updated"]))
    assert shipment.data.promised_delivery == datetime(2026, 3, 4, 23, tzinfo=UTC)  # type: ignore[union-attr]


# --- rejections -------------------------------------------------------------------------------


def test_missing_field_is_named() -> None:
    assert problems(altered("payment.failed", invoice_id=None)) == [
        "data.invoice_id: is required but missing"
    ]
    no_customer = {k: v for k, v in EXAMPLES["payment.failed"].items() if k != "customer_id"}
    assert problems(no_customer) == ["customer_id: is required but missing"]


def test_extra_field_is_named_in_data_and_in_the_envelope() -> None:
    [line] = problems(altered("payment.failed", invoice="in_1"))
    assert line.startswith("data.invoice: is not a field of this event type")
    [line] = problems(dict(EXAMPLES["payment.failed"], customer="cus_1"))
    assert line.startswith("customer: is not a field of this event type")


def test_wrong_enum_lists_the_allowed_values() -> None:
    [line] = problems(altered("shipment.updated", status="lost"))
    assert line.startswith("data.status: ")
    for allowed in (
        "label_created",
        "in_transit",
        "out_for_delivery",
        "delivered",
        "exception",
        "returned",
    ):
        assert f"'{allowed}'" in line
    assert "(got 'lost')" in line
    [line] = problems(altered("customer.updated", tier="gold"))
    assert line.startswith("data.tier: ") and "'standard'" in line and "'premium'" in line


def test_negative_money_is_refused() -> None:
    [line] = problems(altered("payment.failed", amount=-1))
    assert line.startswith("data.amount: ") and "greater than or equal to 0" in line
    [line] = problems(altered("shipment.updated", order_value={"amount": -5, "currency": "USD"}))
    assert line.startswith("data.order_value.amount: ")


@pytest.mark.parametrize("amount", [2**53, 2**64, 2**1024])
def test_money_beyond_what_json_readers_hold_exactly_is_refused(amount: int) -> None:
    """Unbounded, 2**64 failed the decision log's JSON encoding and 2**1024 the float of a
    guardrail's reason, after the event was accepted (found by fuzzing the core)."""
    [line] = problems(altered("payment.failed", amount=amount))
    assert line.startswith("data.amount: ") and "less than or equal to 9007199254740991" in line
    order = {"amount": amount, "currency": "USD"}
    [line] = problems(altered("shipment.updated", order_value=order))
    assert line.startswith("data.order_value.amount: ")
    assert parse_event(json.dumps(altered("payment.failed", amount=2**53 - 1)))


@pytest.mark.parametrize("id_", ["evt\u0000", "a\nb", "\u007f", "tab\there"])
def test_ids_with_control_characters_are_refused(id_: str) -> None:
    """PostgreSQL refuses NUL in a text column: such an id failed its batch on every worker
    that took the partition (found in review)."""
    [line] = problems(dict(EXAMPLES["payment.failed"], event_id=id_))
    assert line.startswith("event_id: ")
    [line] = problems(dict(EXAMPLES["payment.failed"], customer_id=id_))
    assert line.startswith("customer_id: ")
    assert parse_event(json.dumps(dict(EXAMPLES["payment.failed"], event_id="evt_é-1:ok")))


def test_attempt_numbers_are_bounded() -> None:
    [line] = problems(altered("payment.failed", attempt=2**64))
    assert line.startswith("data.attempt: ") and "less than or equal to 10000" in line
    [line] = problems(altered("message.status", attempt=10_001))
    assert line.startswith("data.attempt: ")


def test_money_must_be_integer_minor_units() -> None:
    [line] = problems(altered("payment.failed", amount=29.99))
    assert line.startswith("data.amount: ") and "integer" in line
    [line] = problems(altered("payment.failed", amount="2900"))  # strict JSON: no coercion
    assert line.startswith("data.amount: ")


@pytest.mark.parametrize("code", ["ABC", "usd", "US", "EURO"])
def test_bad_currency_is_refused(code: str) -> None:
    [line] = problems(altered("payment.failed", currency=code))
    assert line.startswith("data.currency: ") and code in line


def test_timestamps_need_an_offset() -> None:
    event = dict(EXAMPLES["payment.failed"], occurred_at="2026-03-02T10:00:00")
    [line] = problems(event)
    assert line.startswith("occurred_at: ") and "timezone" in line
    [line] = problems(altered("usage.reported", period_start="2026-03-01T00:00:00"))
    assert line.startswith("data.period_start: ")


@pytest.mark.parametrize(
    "when",
    [
        "9999-12-31T23:00:00Z",  # a "never" sentinel: adding a retry delay overflowed
        "2200-01-01T00:00:00Z",
        "2199-12-31T20:00:00-05:00",  # 2200-01-01T01:00Z
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:30:00+01:00",  # 1969-12-31T23:30Z
        "0001-01-01T00:00:00+14:00",
    ],
)
def test_times_before_1970_or_from_2200_on_are_refused(when: str) -> None:
    [line] = problems(dict(EXAMPLES["payment.failed"], occurred_at=when))
    assert line.startswith("occurred_at: must be from 1970-01-01 to before 2200-01-01")
    assert when in line
    [line] = problems(altered("renewal.upcoming", renews_at=when))
    assert line.startswith("data.renews_at: ") and "left out or null" in line


def test_times_at_the_edges_of_the_range_are_accepted() -> None:
    for when in ("1970-01-01T00:00:00Z", "1970-01-01T00:30:00-01:00", "2199-12-31T23:59:59Z"):
        event = parse_event(json.dumps(dict(EXAMPLES["payment.failed"], occurred_at=when)))
        assert event.occurred_at == datetime.fromisoformat(when), when


def test_numeric_timestamp_in_json_is_refused() -> None:
    [line] = problems(dict(EXAMPLES["payment.failed"], occurred_at=1772445600))
    assert line.startswith("occurred_at: ") and "1772445600" in line


def test_bad_e164_phone_is_refused() -> None:
    for phone in ("4155550100", "+04155550100", "+1 415 555 0100", "+1234567890123456"):
        [line] = problems(altered("customer.updated", phone=phone))
        assert line.startswith("data.phone: "), phone


def test_unknown_timezone_is_refused() -> None:
    [line] = problems(altered("customer.updated", timezone="Mars/Olympus"))
    assert line.startswith("data.timezone: ") and "Mars/Olympus" in line and "IANA" in line


def test_period_end_before_start_is_refused() -> None:
    [line] = problems(
        altered(
            "usage.reported", period_start="2026-03-02T00:00:00Z", period_end="2026-03-01T00:00:00Z"
        )
    )
    assert line.startswith("data.period_end: ") and "is before period_start" in line


def test_equal_period_bounds_are_accepted() -> None:
    event = altered("usage.reported", period_start=AT, period_end="2026-03-02T11:00:00+01:00")
    assert parse_event(json.dumps(event)).type == "usage.reported"


def test_attempt_must_be_at_least_one() -> None:
    [line] = problems(altered("payment.failed", attempt=0))
    assert line.startswith("data.attempt: ") and "greater than or equal to 1" in line


def test_usage_value_must_be_finite_and_not_negative() -> None:
    [line] = problems(altered("usage.reported", value=-0.5))
    assert line.startswith("data.value: ")
    [line] = problems(json.dumps(altered("usage.reported", value=float("nan"))))
    assert line.startswith("data.value: ") and "finite" in line


def test_unknown_type_lists_the_known_types() -> None:
    [line] = problems(dict(EXAMPLES["payment.failed"], type="payment.refunded"))
    assert "unknown event type" in line
    for known in EVENT_TYPES:
        assert known in line


def test_unknown_or_missing_type_names_the_type_field() -> None:
    [unknown] = problems(dict(EXAMPLES["payment.failed"], type="payment.refunded"))
    assert unknown.startswith("type: ") and "payment.refunded" in unknown
    missing = {k: v for k, v in EXAMPLES["payment.failed"].items() if k != "type"}
    [line] = problems(missing)
    assert line.startswith("type: ")


@pytest.mark.parametrize("raw", ["{not json", "", b"\xff\xfe", "[]", "42"])
def test_not_json_or_not_an_object_is_refused(raw: str | bytes) -> None:
    [line] = problems(raw)
    assert line.startswith("(event): ")


def test_every_bad_field_is_reported_at_once() -> None:
    event = altered("customer.updated", phone="555", timezone="Nowhere/City", tier="gold")
    event["occurred_at"] = "yesterday"
    got = problems(event)
    assert [p.split(":")[0] for p in got] == [
        "occurred_at",
        "data.phone",
        "data.timezone",
        "data.tier",
    ]


def test_schema_version_other_than_1_is_refused() -> None:
    [line] = problems(dict(EXAMPLES["renewal.renewed"], schema_version=2))
    assert line.startswith("schema_version: ")


# --- customer.updated: absent vs explicit null ------------------------------------------------


def updated(**data: Any) -> CustomerUpdated:
    event = parse_event(json.dumps(envelope("customer.updated", data)))
    assert isinstance(event, CustomerUpdated)
    return event


def test_absent_fields_leave_the_profile_unchanged() -> None:
    p = Profile()
    p.apply(updated(**EXAMPLES["customer.updated"]["data"]).data)
    before = copy.deepcopy(p)
    p.apply(updated(locale="fr-CA").data)
    assert p.locale == "fr-CA"
    assert (p.email, p.phone, p.timezone, p.tier) == (
        before.email,
        before.phone,
        before.timezone,
        "premium",
    )
    assert (p.sms_transactional, p.sms_marketing, p.email_transactional, p.email_marketing) == (
        True, False, True, True,
    )  # fmt: skip


def test_explicit_null_clears_a_field() -> None:
    p = Profile()
    p.apply(updated(**EXAMPLES["customer.updated"]["data"]).data)
    p.apply(updated(phone=None, tier=None).data)
    assert p.phone is None and p.tier == "standard"
    assert p.email == "ann@example.com" and p.timezone == "America/New_York"


def test_consent_is_merged_per_channel_and_purpose() -> None:
    p = Profile()
    assert not p.known
    p.apply(updated(consent={"sms": {"transactional": True}}).data)
    assert p.known and p.sms_transactional and not p.sms_marketing
    p.apply(updated(consent={"sms": {"marketing": True}, "email": {"transactional": True}}).data)
    assert (p.sms_transactional, p.sms_marketing, p.email_transactional, p.email_marketing) == (
        True, True, True, False,
    )  # fmt: skip
    p.apply(updated(consent={"sms": {"transactional": False}}).data)
    assert (p.sms_transactional, p.sms_marketing) == (False, True)


def test_an_empty_update_only_marks_the_customer_known() -> None:
    p = Profile(email="a@example.com", tier="premium")
    p.apply(updated().data)
    assert p.known and p.email == "a@example.com" and p.tier == "premium"


# --- JSON Schema export -----------------------------------------------------------------------


def _check(schema: dict[str, Any], value: Any, root: dict[str, Any], where: str = "") -> list[str]:
    """A small JSON Schema (2020-12 subset) validator for what pydantic emits here."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return _check(root["$defs"][name], value, root, where)
    if "anyOf" in schema:
        if any(not _check(s, value, root, where) for s in schema["anyOf"]):
            return []
        return [f"{where}: matches no anyOf branch"]
    errors: list[str] = []
    kinds = {
        "object": dict, "string": str, "integer": int, "number": (int, float),
        "boolean": bool, "null": type(None),
    }  # fmt: skip
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, kinds[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            return [f"{where}: not {kind}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: not the constant")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: not in enum")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: below minimum")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 10**9):
            errors.append(f"{where}: bad length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: does not match pattern")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}.{r}: required" for r in schema.get("required", []) if r not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"{where}.{k}: not allowed" for k in value if k not in props]
        for key, item in value.items():
            if key in props:
                errors += _check(props[key], item, root, f"{where}.{key}")
    return errors


def validate(schema: dict[str, Any], value: Any) -> list[str]:
    """Errors of ``value`` against ``schema``: with jsonschema if installed, else the subset."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return _check(schema, value, schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(value)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("schemas") / "out"
    result = CliRunner().invoke(app, ["schema", "export", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(EVENT_TYPES)} schemas" in result.stdout
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == sorted(f"{t}.schema.json" for t in EVENT_TYPES)
    return {f.name.removesuffix(".schema.json"): json.loads(f.read_text()) for f in files}


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_exported_schema_structure(exported: dict[str, dict[str, Any]], type_: str) -> None:
    schema = exported[type_]
    assert schema == json.loads(json.dumps(json_schemas()[type_]))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/v1/{type_}.json")
    assert schema["title"] == type_ and schema["type"] == "object"
    assert set(schema["required"]) == {"event_id", "customer_id", "occurred_at", "type", "data"}
    assert schema["properties"]["type"]["const"] == type_
    assert schema["additionalProperties"] is False
    data_def = schema["$defs"][schema["properties"]["data"]["$ref"].removeprefix("#/$defs/")]
    assert data_def["additionalProperties"] is False
    assert set(EXAMPLES[type_]["data"]) <= set(data_def["properties"])
    model = MODELS[type_].model_fields["data"].annotation
    required = {n for n, f in model.model_fields.items() if f.is_required()}  # type: ignore[union-attr]
    assert set(data_def.get("required", [])) == required


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_exported_schema_accepts_the_example_and_refuses_broken_ones(
    exported: dict[str, dict[str, Any]], type_: str
) -> None:
    schema = exported[type_]
    assert validate(schema, EXAMPLES[type_]) == []
    assert validate(schema, dict(EXAMPLES[type_], surprise=1)) != []
    assert validate(schema, dict(EXAMPLES[type_], type="not.this")) != []
    for name in list(EXAMPLES[type_]["data"]):
        broken = copy.deepcopy(EXAMPLES[type_])
        broken["data"][name] = {"unexpected": "object"}
        assert validate(schema, broken) != [], name


def test_exported_schema_carries_the_value_rules(exported: dict[str, dict[str, Any]]) -> None:
    failed = exported["payment.failed"]
    assert validate(failed, altered("payment.failed", amount=-1)) != []
    assert validate(failed, altered("payment.failed", attempt=0)) != []
    assert validate(failed, altered("payment.failed", currency="usd")) != []
    assert validate(exported["shipment.updated"], altered("shipment.updated", status="lost")) != []
    assert validate(exported["customer.updated"], altered("customer.updated", phone="555")) != []


# --- round-trip property ----------------------------------------------------------------------

_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=24)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
_offsets = st.integers(-12 * 4, 14 * 4).map(lambda q: timezone(timedelta(minutes=15 * q)))
_moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=_offsets
)
_stamps = _moments.map(lambda d: d.isoformat())
_currencies = st.sampled_from(["USD", "EUR", "JPY", "GBP", "CHF", "BRL"])
_amounts = st.integers(0, 2**53)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_consent_channel = st.fixed_dictionaries(
    {}, optional={"transactional": _maybe(st.booleans()), "marketing": _maybe(st.booleans())}
)
_data: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "customer.updated": st.fixed_dictionaries(
        {},
        optional={
            "email": _maybe(st.sampled_from(["ann@example.com", "b.o+tag@mail.example.org"])),
            "phone": _maybe(st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True)),
            "timezone": _maybe(
                st.sampled_from(["UTC", "Europe/Paris", "America/Sao_Paulo", "Asia/Kolkata"])
            ),
            "locale": _maybe(st.sampled_from(["en", "fr-CA", "pt_br", "zh-Hant-TW", "es-419"])),
            "tier": _maybe(st.sampled_from(["standard", "premium"])),
            "consent": _maybe(
                st.fixed_dictionaries(
                    {},
                    optional={"sms": _maybe(_consent_channel), "email": _maybe(_consent_channel)},
                )
            ),
        },
    ),
    "shipment.updated": st.fixed_dictionaries(
        {
            "shipment_id": _ids,
            "order_id": _ids,
            "carrier": _text,
            "status": st.sampled_from(
                [
                    "label_created",
                    "in_transit",
                    "out_for_delivery",
                    "delivered",
                    "exception",
                    "returned",
                ]
            ),
            "promised_delivery": _stamps,
        },
        optional={
            "estimated_delivery": _maybe(_stamps),
            "exception_code": _maybe(_text),
            "order_value": _maybe(
                st.fixed_dictionaries({"amount": _amounts, "currency": _currencies})
            ),
        },
    ),  # fmt: skip
    "payment.failed": st.fixed_dictionaries(
        {
            "payment_id": _ids,
            "invoice_id": _ids,
            "amount": _amounts,
            "currency": _currencies,
            "decline_code": _text,
            "attempt": st.integers(1, 50),
        }
    ),  # fmt: skip
    "payment.succeeded": st.fixed_dictionaries(
        {"payment_id": _ids, "invoice_id": _ids, "amount": _amounts, "currency": _currencies}
    ),
    "usage.reported": st.builds(
        lambda metric, value, start, length: {
            "metric": metric,
            "value": value,
            "period_start": start.isoformat(),
            "period_end": (start + length).isoformat(),
        },
        _text,
        st.floats(0, 1e15, allow_nan=False, allow_infinity=False) | st.integers(0, 10**9),
        _moments,
        st.timedeltas(timedelta(0), timedelta(days=400)),
    ),  # fmt: skip
    "renewal.upcoming": st.fixed_dictionaries(
        {
            "subscription_id": _ids,
            "plan": _text,
            "renews_at": _stamps,
            "amount": _amounts,
            "currency": _currencies,
            "auto_renew": st.booleans(),
        }
    ),  # fmt: skip
    "renewal.renewed": st.fixed_dictionaries({"subscription_id": _ids, "plan": _text}),
    "renewal.cancelled": st.fixed_dictionaries({"subscription_id": _ids, "plan": _text}),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    type_ = draw(st.sampled_from(PUBLIC))
    event = {
        "event_id": draw(_ids),
        "type": type_,
        "customer_id": draw(_ids),
        "occurred_at": draw(_stamps),
        "data": draw(_data[type_]),
    }
    if draw(st.booleans()):
        event["source"] = draw(_maybe(_text))
    return event


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(events())
def test_valid_events_round_trip_through_json(obj: dict[str, Any]) -> None:
    event = parse_event(json.dumps(obj))
    assert (event.type, event.event_id, event.customer_id) == (
        obj["type"],
        obj["event_id"],
        obj["customer_id"],
    )
    assert event.occurred_at == datetime.fromisoformat(obj["occurred_at"])
    assert event.data.model_fields_set == set(obj["data"])
    again = parse_event(event.model_dump_json())
    assert again == event
    # what a relay must send to keep the meaning: absent stays absent, null stays null
    kept = parse_event(event.model_dump_json(exclude_unset=True))
    assert kept == event
    assert kept.data.model_fields_set == event.data.model_fields_set
    if isinstance(event, CustomerUpdated):
        assert isinstance(kept, CustomerUpdated)
        via_original, via_relay = Profile(), Profile()
        via_original.apply(event.data)
        via_relay.apply(kept.data)
        assert via_relay == via_original
