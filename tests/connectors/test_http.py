"""The HTTP action connector with its real httpx client against a local double of the
operator's system: the request it sends, how it reads the answer, what it says is worth
retrying, the circuit breaker, and the helpdesk ticket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from connectors.cases import (
    MakeConnector,
    credit,
    escalation,
    http_tool,
    load_text,
    rebook,
    write_connectors,
)
from connectors.doubles import (
    SECRET,
    FakeClock,
    OperatorSystem,
    Seen,
    Step,
    answer,
    hang_before_performing,
    ok,
    perform_then_hang,
    rejected,
)
from pydantic import SecretStr

from outreach.agents.connectors import Effect, EffectResult, FileConnector
from outreach.connectors import ConnectorsSettings, ToolRouter, build_connector, router_for
from outreach.connectors.http import HttpConnector
from outreach.errors import ConnectorPaused, PermanentConnectorError, TransientConnectorError

READ = "0.5s"  # the read timeout of the fault cases: the double holds its answer longer
REBOOK_PATH = "/v1/shipments/shp_1/rebook"


def only_request(system: OperatorSystem) -> Seen:
    [seen] = system.requests
    return seen


# -- the request -------------------------------------------------------------------------------

REQUEST_FILE = """\
tools:
  rebook_shipment:
    kind: http
    url: "SYSTEM/v1/shipments/{{ params.shipment_id }}/rebook"
    method: PUT
    idempotent: true
    headers:
      Authorization: "Bearer ${OMS_TOKEN}"
      X-Team: logistics
    body:
      shipment_id: "{{ params.shipment_id }}"
      value: "{{ params.order_value }}"
      currency: "{{ params.currency }}"
      note: "order {{ params.order_id }} worth {{ params.order_value }}"
      items: ["{{ params.order_value }}", "{{ effect.idempotency_key }}", 7, true, null]
      customer: "{{ customer_id }}"
      reason: late delivery
"""


async def test_the_request_is_rendered_from_the_effect_keyed_signed_and_carries_its_headers(
    system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    loaded = load_text(
        tmp_path, REQUEST_FILE.replace("SYSTEM", system.url()), {"OMS_TOKEN": "tok-123"}
    )
    connector = connect(loaded.tools["rebook_shipment"])
    effect = rebook(order_value=1250, currency=None)
    result = await connector.perform(effect)
    assert (result.status, result.replayed) == ("done", False)
    seen = only_request(system)
    assert (seen.method, seen.path) == ("PUT", REBOOK_PATH)
    assert seen.body == {
        "shipment_id": "shp_1",
        "value": 1250,
        "currency": None,
        "note": "order ORD-1 worth 1250",
        "items": [1250, effect.idempotency_key, 7, True, None],
        "customer": "cus_1",
        "reason": "late delivery",
    }
    assert type(seen.body["value"]) is int  # exactly one {{ path }}: the value, typed
    assert seen.headers["idempotency-key"] == effect.idempotency_key
    assert seen.headers["authorization"] == "Bearer tok-123"
    assert seen.headers["x-team"] == "logistics"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"] == "outreach-connector"
    assert seen.signed is True  # checked by the system, not by outreach.signing
    assert system.performed_keys == [effect.idempotency_key]


async def test_without_a_body_template_the_effect_itself_is_the_body(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    effect = rebook()
    await connect(http_tool(system.url("/effects"))).perform(effect)
    seen = only_request(system)
    assert (seen.method, seen.path) == ("POST", "/effects")
    assert seen.body == effect.model_dump(mode="json")


async def test_without_a_secret_no_signature_is_sent(connect: MakeConnector) -> None:
    with OperatorSystem(secret=None) as system:
        connector = connect(http_tool(system.url("/effects")), secret=None)
        assert (await connector.perform(rebook())).status == "done"
        seen = only_request(system)
    assert "x-outreach-signature" not in seen.headers
    assert seen.headers["x-outreach-timestamp"].isdigit()
    assert seen.headers["idempotency-key"] == rebook().idempotency_key


async def test_a_request_signed_with_another_secret_is_refused_by_the_system(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    connector = connect(http_tool(system.url("/effects")), secret="not-the-secret")
    with pytest.raises(PermanentConnectorError, match="401"):
        await connector.perform(rebook())
    assert only_request(system).signed is False
    assert system.performed == []


async def test_each_effect_has_its_own_key_and_a_repeat_is_answered_as_a_replay(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    connector = connect(http_tool(system.url("/effects"), response={"external_id": "id"}))
    first = await connector.perform(rebook("k1"))
    other = await connector.perform(rebook("k2"))
    again = await connector.perform(rebook("k1"))
    assert (first.replayed, other.replayed, again.replayed) == (False, False, True)
    assert again.external_id == first.external_id != other.external_id
    assert [seen.key for seen in system.requests] == ["k1", "k2", "k1"]
    assert system.performed_keys == ["k1", "k2"]


# -- the answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("rebooking.id", {"rebooking": {"id": 42}}, "42"),
        ("items.1.ref", {"items": [{"ref": "a"}, {"ref": "rb_9"}]}, "rb_9"),
        ("rebooking.id", {"status": "accepted"}, None),
    ],
)
async def test_the_external_id_is_read_at_its_dotted_path(
    system: OperatorSystem, connect: MakeConnector, path: str, body: Any, expected: str | None
) -> None:
    connector = connect(http_tool(system.url("/x"), response={"external_id": path}))
    system.script(ok(body))
    assert (await connector.perform(rebook())).external_id == expected


REFUSING = {
    "failed_when": {"status": ["rejected", "not_possible"]},
    "reason": "error.message",
    "external_id": "id",
}


async def test_an_answer_matching_failed_when_is_a_failed_result_with_the_systems_reason(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    connector = connect(http_tool(system.url("/x"), response=REFUSING))
    system.script(rejected("parcel already delivered"), ok({"id": "rb_1", "status": "accepted"}))
    refused = await connector.perform(rebook("k1"))
    assert refused.status == "failed"
    assert refused.detail == "status = 'rejected': parcel already delivered"
    done = await connector.perform(rebook("k2"))
    assert (done.status, done.external_id) == ("done", "rb_1")


EVENTS = {
    "events": [
        {
            "when": "new_estimate",
            "type": "shipment.updated",
            "data": {
                "shipment_id": "{{ params.shipment_id }}",
                "order_id": "{{ params.order_id }}",
                "carrier": "{{ answer.carrier }}",
                "status": "in_transit",
                "promised_delivery": "{{ answer.promised }}",
                "estimated_delivery": "{{ answer.new_estimate }}",
                "order_value": {"amount": "{{ params.order_value }}", "currency": "USD"},
                "exception_code": "rebooked by {{ answer.carrier }}",
            },
        },
        {  # reads nothing of the answer but ``when``'s path must still be there
            "when": "delivered_at",
            "type": "shipment.updated",
            "data": {"shipment_id": "{{ params.shipment_id }}", "status": "delivered"},
        },
    ]
}


async def test_events_are_made_from_the_answer_only_when_their_path_is_in_it(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    connector = connect(http_tool(system.url("/x"), response=EVENTS))
    base = {"carrier": "dhl", "promised": "2026-03-10T15:00:00Z"}
    system.script(ok(base), ok({**base, "new_estimate": "2026-03-12T18:00:00Z"}))
    without = await connector.perform(rebook("k1"))
    assert (without.status, without.events, without.detail) == ("done", (), "200")
    reported = await connector.perform(rebook("k2"))
    assert reported.events == (
        {
            "type": "shipment.updated",
            "data": {
                "shipment_id": "shp_1",
                "order_id": "ORD-1",
                "carrier": "dhl",
                "status": "in_transit",
                "promised_delivery": "2026-03-10T15:00:00Z",
                "estimated_delivery": "2026-03-12T18:00:00Z",
                "order_value": {"amount": 1000, "currency": "USD"},
                "exception_code": "rebooked by dhl",
            },
        },
    )


async def test_an_answer_lacking_what_an_event_reads_is_done_and_the_event_says_why(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    """The effect happened; the event it cannot make is kept with the reason (the dispatcher
    dead-letters it: it does not validate), not silently dropped."""
    connector = connect(http_tool(system.url("/x"), response=EVENTS))
    system.script(ok({"new_estimate": "2026-03-12T18:00:00Z"}))  # no carrier, no promise
    result = await connector.perform(rebook())
    assert result.status == "done"
    [event] = result.events
    assert event["type"] == "shipment.updated"
    assert "does not fit response.events (shipment.updated)" in event["mapping_error"]
    assert "answer.carrier" in event["mapping_error"]


# -- what is retried ---------------------------------------------------------------------------

IDEMPOTENT = pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not"])


def faulty(url: str, idempotent: bool, **fields: Any) -> Any:
    return http_tool(url, idempotent=idempotent, timeout={"connect": "2s", "read": READ}, **fields)


@IDEMPOTENT
async def test_an_unreachable_system_is_transient_for_every_tool(
    connect: MakeConnector, refused_url: str, idempotent: bool
) -> None:
    connector = connect(faulty(refused_url + "/x", idempotent))
    with pytest.raises(TransientConnectorError) as info:
        await connector.perform(rebook())
    assert type(info.value) is TransientConnectorError
    assert "unreachable" in str(info.value)


MAYBE_PERFORMED = [
    pytest.param(perform_then_hang(), 1, None, id="read-timeout-after-performing"),
    pytest.param(hang_before_performing(), 0, None, id="read-timeout-before-performing"),
    pytest.param(answer(500), 0, None, id="500"),
    pytest.param(answer(503, retry_after="7"), 0, 7.0, id="503-retry-after"),
]


@IDEMPOTENT
@pytest.mark.parametrize(("step", "performed", "retry_after"), MAYBE_PERFORMED)
async def test_an_answer_that_may_have_been_performed_is_retried_only_for_an_idempotent_tool(
    system: OperatorSystem,
    connect: MakeConnector,
    idempotent: bool,
    step: Step,
    performed: int,
    retry_after: float | None,
) -> None:
    connector = connect(faulty(system.url("/x"), idempotent))
    system.script(step)
    error: Exception
    if idempotent:
        with pytest.raises(TransientConnectorError) as transient:
            await connector.perform(rebook())
        assert type(transient.value) is TransientConnectorError
        assert transient.value.retry_after == retry_after
        error = transient.value
    else:
        with pytest.raises(PermanentConnectorError) as permanent:
            await connector.perform(rebook())
        error = permanent.value
        assert "outcome is unknown" in str(error)
        assert "not retried" in str(error)
    assert str(error).startswith("rebook_shipment: ")
    assert len(system.requests) == 1
    assert len(system.performed) == performed


@IDEMPOTENT
async def test_429_is_retried_after_retry_after_only_for_idempotent_tools(
    system: OperatorSystem, connect: MakeConnector, idempotent: bool
) -> None:
    """Retries are for tools declared idempotent only (the issue's rule), a 429 included."""
    connector = connect(faulty(system.url("/x"), idempotent))
    system.script(answer(429, retry_after="30"))
    if idempotent:
        with pytest.raises(TransientConnectorError, match="429") as info:
            await connector.perform(rebook())
        assert type(info.value) is TransientConnectorError
        assert info.value.retry_after == 30.0
    else:
        with pytest.raises(PermanentConnectorError, match="429.*not retried"):
            await connector.perform(rebook())
    assert system.performed == []
    assert len(system.requests) == 1


@IDEMPOTENT
async def test_400_is_permanent_with_the_systems_reason(
    system: OperatorSystem, connect: MakeConnector, idempotent: bool
) -> None:
    connector = connect(faulty(system.url("/x"), idempotent))
    system.script(answer(400, {"error": "shipment shp_1 is unknown"}))
    with pytest.raises(PermanentConnectorError) as info:
        await connector.perform(rebook())
    assert "400" in str(info.value) and "shipment shp_1 is unknown" in str(info.value)


@IDEMPOTENT
async def test_409_is_retried_only_for_an_idempotent_tool(
    system: OperatorSystem, connect: MakeConnector, idempotent: bool
) -> None:
    connector = connect(faulty(system.url("/x"), idempotent))
    system.script(answer(409, {"error": "key in flight"}))
    expected = TransientConnectorError if idempotent else PermanentConnectorError
    with pytest.raises(expected, match="409"):
        await connector.perform(rebook())


def misfit() -> Effect:
    """A rebooking without the parameter the templates read (a config for another tool)."""
    return Effect(
        idempotency_key="eff_misfit", action_id="act_misfit", customer_id="cus_1",
        tool="rebook_shipment", params={"order_id": "ORD-1"},
    )  # fmt: skip


@IDEMPOTENT
@pytest.mark.parametrize(
    ("url", "body"),
    [
        pytest.param("/x", {"id": "{{ params.shipment_id }}"}, id="exact-path"),
        pytest.param("/s/{{ params.shipment_id }}", None, id="jinja"),
    ],
)
async def test_templates_that_do_not_fit_the_effect_are_permanent_and_nothing_is_sent(
    system: OperatorSystem, connect: MakeConnector, idempotent: bool, url: str, body: Any
) -> None:
    connector = connect(faulty(system.url(url), idempotent, body=body))
    with pytest.raises(PermanentConnectorError, match="shipment_id") as info:
        await connector.perform(misfit())
    assert "do not fit" in str(info.value)
    assert system.requests == []


# -- the circuit breaker -----------------------------------------------------------------------


def guarded(url: str, failures: int = 2) -> Any:
    return http_tool(
        url, idempotent=True, timeout={"connect": "2s", "read": READ},
        breaker={"failures": failures, "cooldown": "60s"},
        body={"shipment_id": "{{ params.shipment_id }}"},
    )  # fmt: skip


async def open_circuit(connector: HttpConnector, system: OperatorSystem) -> None:
    """Two 500s in a row: the breaker (failures 2) opens."""
    system.script(answer(500), answer(500))
    for key in ("f1", "f2"):
        with pytest.raises(TransientConnectorError) as info:
            await connector.perform(rebook(key))
        assert type(info.value) is TransientConnectorError


@pytest.mark.parametrize(
    "failure",
    [answer(500), answer(502, retry_after="3"), hang_before_performing()],
    ids=["500", "502", "read-timeout"],
)
async def test_failures_in_a_row_open_the_circuit_and_it_holds_without_a_request(
    system: OperatorSystem, connect: MakeConnector, failure: Step
) -> None:
    clock = FakeClock()
    connector = connect(guarded(system.url("/x")), clock=clock)
    system.script(failure, failure)
    for key in ("f1", "f2"):
        with pytest.raises(TransientConnectorError) as info:
            await connector.perform(rebook(key))
        assert type(info.value) is TransientConnectorError
    with pytest.raises(ConnectorPaused, match="circuit open") as paused:
        await connector.perform(rebook("k3"))
    assert paused.value.retry_after == 60.0
    clock.advance(59.5)
    with pytest.raises(ConnectorPaused) as still:
        await connector.perform(rebook("k3"))
    assert still.value.retry_after == pytest.approx(0.5)
    assert [seen.key for seen in system.requests] == ["f1", "f2"]
    assert connector.breaker.state == "open"


async def test_an_unreachable_system_opens_the_circuit(
    connect: MakeConnector, refused_url: str
) -> None:
    connector = connect(guarded(refused_url + "/x"), clock=FakeClock())
    for key in ("f1", "f2"):
        with pytest.raises(TransientConnectorError) as info:
            await connector.perform(rebook(key))
        assert type(info.value) is TransientConnectorError
    with pytest.raises(ConnectorPaused):
        await connector.perform(rebook("k3"))


async def test_after_the_cooldown_one_trial_goes_and_its_success_closes_the_circuit(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    clock = FakeClock()
    connector = connect(guarded(system.url("/x")), clock=clock)
    await open_circuit(connector, system)
    clock.advance(60)
    assert connector.breaker.state == "half_open"
    trial, second = await asyncio.gather(
        connector.perform(rebook("k3")), connector.perform(rebook("k4")), return_exceptions=True
    )
    assert isinstance(trial, EffectResult) and trial.status == "done"
    assert isinstance(second, ConnectorPaused)  # while the trial was out
    assert [seen.key for seen in system.requests] == ["f1", "f2", "k3"]
    assert connector.breaker.state == "closed"
    assert (await connector.perform(rebook("k4"))).status == "done"
    assert system.performed_keys == ["k3", "k4"]


async def test_a_failed_trial_opens_the_circuit_again(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    clock = FakeClock()
    connector = connect(guarded(system.url("/x")), clock=clock)
    await open_circuit(connector, system)
    clock.advance(60)
    system.script(answer(503))
    with pytest.raises(TransientConnectorError) as info:
        await connector.perform(rebook("trial"))
    assert type(info.value) is TransientConnectorError
    with pytest.raises(ConnectorPaused) as paused:
        await connector.perform(rebook("k4"))
    assert paused.value.retry_after == 60.0  # a whole cooldown from the failed trial
    assert [seen.key for seen in system.requests] == ["f1", "f2", "trial"]
    assert connector.breaker.opened == 2
    clock.advance(60)
    assert (await connector.perform(rebook("k4"))).status == "done"


async def test_4xx_and_429_are_the_system_answering_and_do_not_open_the_circuit(
    system: OperatorSystem, connect: MakeConnector
) -> None:
    connector = connect(guarded(system.url("/x")), clock=FakeClock())
    refusals = [answer(400), answer(404), answer(422), answer(429), answer(429), answer(429)]
    system.script(*refusals)
    for i in range(len(refusals)):
        with pytest.raises((PermanentConnectorError, TransientConnectorError)) as info:
            await connector.perform(rebook(f"k{i}"))
        assert not isinstance(info.value, ConnectorPaused)
    assert (await connector.perform(rebook("last"))).status == "done"
    assert len(system.requests) == len(refusals) + 1
    assert (connector.breaker.state, connector.breaker.opened) == ("closed", 0)


@pytest.mark.parametrize("trial", ["misfit", "429", "409"])
async def test_a_trial_that_does_not_reach_a_verdict_does_not_hold_the_tool_for_ever(
    system: OperatorSystem, connect: MakeConnector, trial: str
) -> None:
    """The trial after the cooldown ends in neither a success nor a failure of the system (it
    could not be sent, or the system answered 429/409): the tool must not stay held."""
    clock = FakeClock()
    connector = connect(guarded(system.url("/x")), clock=clock)
    await open_circuit(connector, system)
    clock.advance(60)
    if trial == "misfit":
        with pytest.raises(PermanentConnectorError):
            await connector.perform(misfit())
    else:
        system.script(answer(int(trial), retry_after="1"))
        with pytest.raises(TransientConnectorError) as info:
            await connector.perform(rebook("trial"))
        assert type(info.value) is TransientConnectorError
    clock.advance(60)  # even a whole cooldown later
    assert (await connector.perform(rebook("k4"))).status == "done"


# -- the helpdesk ------------------------------------------------------------------------------

HELPDESK_FILE = """\
tools:
  escalate_to_human:
    kind: helpdesk
    url: "SYSTEM/api/v2/tickets.json"
    headers:
      Authorization: "Basic ${ZENDESK_BASIC_AUTH}"
"""


async def helpdesk(
    system: OperatorSystem, tmp_path: Path, public_url: str | None
) -> tuple[ToolRouter, Seen, EffectResult]:
    loaded = load_text(
        tmp_path, HELPDESK_FILE.replace("SYSTEM", system.url()), {"ZENDESK_BASIC_AUTH": "YWJj"}
    )
    settings = ConnectorsSettings(connector_secret=SecretStr(SECRET))
    router = router_for(loaded, FileConnector(tmp_path / "effects.jsonl"), settings, public_url)
    system.script(ok({"ticket": {"id": 35436, "status": "new"}}))
    try:
        result = await router.perform(escalation())
    finally:
        await router.aclose()
    return router, only_request(system), result


async def test_escalate_to_human_becomes_a_zendesk_ticket_linking_the_timeline(
    system: OperatorSystem, tmp_path: Path
) -> None:
    _, seen, result = await helpdesk(system, tmp_path, "https://outreach.example.com/")
    effect = escalation()
    assert (seen.method, seen.path) == ("POST", "/api/v2/tickets.json")
    assert seen.signed is True
    assert seen.headers["authorization"] == "Basic YWJj"
    assert seen.key == effect.idempotency_key
    ticket = seen.body["ticket"]
    assert ticket["subject"] == effect.params["summary"]
    assert (ticket["priority"], ticket["tags"]) == ("high", ["outreach", "logistics"])
    assert ticket["external_id"] == effect.idempotency_key
    assert ticket["comment"]["public"] is False
    body = ticket["comment"]["body"]
    assert body.startswith(effect.params["summary"] + "\n")
    for line in (
        "What happened:\n- shipment shp_1 went into exception\n- rebooking was rejected\n",
        "Already tried:\n- rebook_shipment\n",
        "Next step: call the carrier",
        "Evidence:\n- days_late: 5\n- shipment_id: shp_1\n",
        "Timeline: https://outreach.example.com/v1/customers/cus_1/timeline\n",
        f"Customer: cus_1 (action {effect.action_id})",
    ):
        assert line in body, line
    assert (result.status, result.external_id) == ("done", "35436")


async def test_without_a_public_url_the_ticket_has_no_timeline_line(
    system: OperatorSystem, tmp_path: Path
) -> None:
    _, seen, _ = await helpdesk(system, tmp_path, None)
    body = seen.body["ticket"]["comment"]["body"]
    assert "Timeline" not in body and "Next step: call the carrier" in body


async def test_a_long_summary_is_cut_to_150_characters_in_the_subject(
    system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    loaded = load_text(
        tmp_path, HELPDESK_FILE.replace("SYSTEM", system.url()), {"ZENDESK_BASIC_AUTH": "x"}
    )
    connector = connect(loaded.tools["escalate_to_human"], tool="escalate_to_human")
    long = escalation()
    long = long.model_copy(update={"params": {**long.params, "summary": "late " * 90}})
    await connector.perform(long)
    subject = only_request(system).body["ticket"]["subject"]
    assert len(subject) == 150 and subject.endswith("...")
    assert subject[:-3] == ("late " * 90)[:147]


# -- the router --------------------------------------------------------------------------------

ROUTED_FILE = """\
tools:
  rebook_shipment:
    kind: http
    url: "SYSTEM/rebook"
  grant_credit:
    kind: file
"""


async def test_listed_tools_go_to_their_connector_and_every_other_to_the_file(
    system: OperatorSystem, tmp_path: Path
) -> None:
    path = write_connectors(tmp_path, ROUTED_FILE.replace("SYSTEM", system.url()))
    settings = ConnectorsSettings(connectors=path, connector_secret=SecretStr(SECRET))
    router = build_connector(tmp_path, settings)
    try:
        assert isinstance(router.routes["rebook_shipment"], HttpConnector)
        for effect in (rebook(), credit(), escalation()):
            assert (await router.perform(effect)).status == "done"
    finally:
        await router.aclose()
    assert [(seen.path, seen.key, seen.signed) for seen in system.requests] == [
        ("/rebook", rebook().idempotency_key, True)
    ]
    written = [
        orjson.loads(line) for line in (tmp_path / "effects.jsonl").read_bytes().splitlines()
    ]
    assert [line["key"] for line in written] == [
        credit().idempotency_key, escalation().idempotency_key,
    ]  # fmt: skip


async def test_no_connectors_file_sends_every_tool_to_the_file(tmp_path: Path) -> None:
    router = build_connector(tmp_path, ConnectorsSettings())
    assert router.routes == {}
    assert (await router.perform(rebook())).external_id == f"file:{rebook().idempotency_key}"
