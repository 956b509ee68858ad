"""The connectors file: every mistake located as file:line:col at the line to fix, the shipped
example, and the template helpers (``render``, ``lookup``) as properties."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from connectors.cases import MakeConnector, credit, escalation, load_text, rebook, write_connectors
from connectors.doubles import OperatorSystem, ok
from hypothesis import given, settings
from hypothesis import strategies as st
from support import REPO

from outreach.connectors.config import HttpTool, load_connectors, lookup, render
from outreach.events import ShipmentUpdated, event_from_obj
from outreach.rules.yamlfile import Problem, RuleFileError

EXAMPLE = REPO / "connectors.example.yaml"


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[Problem]:
    """The problems ``load_connectors`` reports for ``text`` (it must refuse the file)."""
    with pytest.raises(RuleFileError) as info:
        load_text(tmp_path, text, env)
    for problem in info.value.problems:
        assert str(info.value).count(f"{tmp_path / 'connectors.yaml'}:{problem.line}:") >= 1
    return info.value.problems


def only_problem(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Problem:
    [problem] = problems(tmp_path, text, env)
    return problem


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the only line containing ``needle``."""
    [found] = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return found


# -- located errors ----------------------------------------------------------------------------

UNKNOWN_TOOL = """\
tools:
  rebook_shipment:
    kind: http
    url: https://oms.example.com/rebook
  send_flowers:
    kind: http
    url: https://florist.example.com/send
"""


def test_an_unknown_tool_is_refused_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, UNKNOWN_TOOL)
    assert "not a pre-approved tool" in problem.message and "send_flowers" in str(problem)
    assert "rebook_shipment" in problem.message  # the known ones are listed
    assert problem.line == line_of(UNKNOWN_TOOL, "send_flowers:")


MISSING_VAR = """\
tools:
  rebook_shipment:
    kind: http
    url: "${OMS_URL}/rebook"
    headers:
      X-Team: logistics
      Authorization: "Bearer ${OMS_TOKEN}"
"""


def test_a_missing_environment_variable_is_named_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MISSING_VAR, {"OMS_URL": "https://oms.example.com"})
    assert problem.message == "${OMS_TOKEN} is not set in the environment; export it"
    assert problem.field == "tools.rebook_shipment.headers.Authorization"
    assert (problem.line, problem.col) == (line_of(MISSING_VAR, "Authorization"), 7)


def test_every_missing_environment_variable_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, MISSING_VAR, {})
    assert [(p.line, p.message.split()[0]) for p in found] == [
        (line_of(MISSING_VAR, "url:"), "${OMS_URL}"),
        (line_of(MISSING_VAR, "Authorization"), "${OMS_TOKEN}"),
    ]


def test_environment_variables_are_resolved_in_the_url_and_headers(tmp_path: Path) -> None:
    env = {"OMS_URL": "https://oms.example.com", "OMS_TOKEN": "tok-1"}
    tool = load_text(tmp_path, MISSING_VAR, env).tools["rebook_shipment"]
    assert isinstance(tool, HttpTool)
    assert tool.url == "https://oms.example.com/rebook"
    assert tool.headers == {"X-Team": "logistics", "Authorization": "Bearer tok-1"}


BAD_TEMPLATE = """\
tools:
  rebook_shipment:
    kind: http
    url: https://oms.example.com/rebook
    body:
      shipment_id: "{{ params.shipment_id }}"
      lines:
        - "fine {{ params.order_id }}"
        - "order {{ params.order_id "
"""


def test_a_template_syntax_error_is_located_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, BAD_TEMPLATE)
    assert problem.message.startswith("template: ")
    assert problem.field == "tools.rebook_shipment.body.lines[1]"
    assert problem.line == line_of(BAD_TEMPLATE, '"order {{')


BAD_EVENT_TYPE = """\
tools:
  rebook_shipment:
    kind: http
    url: https://oms.example.com/rebook
    response:
      events:
        - when: new_estimate
          type: timer.fired
          data: {timer_id: t1}
"""


def test_an_event_type_that_is_not_an_input_type_is_refused_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, BAD_EVENT_TYPE)
    assert "'timer.fired' is not an input event type" in problem.message
    assert "shipment.updated" in problem.message  # what to write instead
    assert problem.line == line_of(BAD_EVENT_TYPE, "type: timer.fired")
    assert problem.field == "tools.rebook_shipment.response.events[0].type"


TYPO = """\
tools:
  rebook_shipment:
    kind: http
    url: https://oms.example.com/rebook
    idempotant: true
"""


def test_an_unknown_field_is_refused_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, TYPO)
    assert "not a known field" in problem.message
    assert (problem.line, problem.col) == (line_of(TYPO, "idempotant"), 5)
    assert problem.field == "tools.rebook_shipment.idempotant"


NOT_HTTP = """\
tools:
  rebook_shipment:
    kind: http
    method: POST
    url: ftp://oms.example.com/rebook
"""


def test_a_url_that_is_not_http_is_refused_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, NOT_HTTP)
    assert "is not an http(s) URL" in problem.message
    assert problem.line == line_of(NOT_HTTP, "url:")
    assert problem.field == "tools.rebook_shipment.url"


def test_a_url_variable_that_is_not_http_is_refused_at_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MISSING_VAR, {"OMS_URL": "ftp://oms", "OMS_TOKEN": "t"})
    assert problem.message == "'ftp://oms/rebook' is not an http(s) URL"
    assert problem.line == line_of(MISSING_VAR, "url:")


# -- the shipped example -----------------------------------------------------------------------


def example_env() -> dict[str, str]:
    """A value for every ``${VAR}`` the example names."""
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", EXAMPLE.read_text()))
    assert names, "the example reads its tokens from the environment"
    urls = {name: f"https://{name.lower()}.example.com" for name in names if "URL" in name}
    return {name: urls.get(name, f"value-of-{name}") for name in names}


def test_the_shipped_example_loads_with_the_variables_it_names(tmp_path: Path) -> None:
    env = example_env()
    loaded = load_connectors(EXAMPLE, env)
    assert {"rebook_shipment", "escalate_to_human"} <= set(loaded.tools)
    for tool in loaded.tools.values():
        if isinstance(tool, HttpTool):
            assert tool.url.startswith("https://") and "${" not in tool.url
            assert all("${" not in value for value in tool.headers.values())
    missing = dict(env)
    missing.pop(sorted(env)[0])
    with pytest.raises(RuleFileError, match=re.escape(f"${{{sorted(env)[0]}}} is not set")):
        load_connectors(EXAMPLE, missing)


async def test_the_shipped_example_rebooking_works_against_a_system_following_the_docs(
    system: OperatorSystem, connect: MakeConnector, tmp_path: Path
) -> None:
    """The OMS contract of docs/connectors.md: the example's templates fit the tools' own
    parameters and its answer mapping turns the documented answer into a valid event."""
    text = EXAMPLE.read_text().replace("${OMS_URL}", system.url())
    loaded = load_connectors(write_connectors(tmp_path, text), example_env())
    rebooking = connect(loaded.tools["rebook_shipment"])
    system.script(
        ok(
            {
                "rebooking_id": "rb_1",
                "carrier": "ups",
                "promised_delivery": "2026-03-10T15:00:00Z",
                "new_estimated_delivery": "2026-03-12T18:00:00Z",
            }
        )
    )
    result = await rebooking.perform(rebook())
    assert (result.status, result.external_id) == ("done", "rb_1")
    [reported] = result.events
    envelope = {"event_id": "e1", "customer_id": "cus_1", "occurred_at": "2026-03-09T10:00:00Z"}
    event = event_from_obj({**envelope, **reported})
    assert isinstance(event, ShipmentUpdated)
    assert event.data.shipment_id == "shp_1"
    assert event.data.estimated_delivery is not None
    assert system.requests[0].path == "/v1/shipments/shp_1/rebook"
    for name, tool in loaded.tools.items():  # every http template fits its tool's effects
        effects = {"rebook_shipment": rebook(), "grant_credit": credit()}
        effect = {**effects, "escalate_to_human": escalation()}.get(name)
        if effect is not None and isinstance(tool, HttpTool):
            connect(tool, tool=name).request(effect)


# -- render and lookup -------------------------------------------------------------------------

PLAIN = st.text(alphabet=st.characters(blacklist_characters="{"), max_size=20)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | PLAIN
NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)


def json_like(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    )


@settings(max_examples=200, deadline=None)
@given(value=json_like(st.text(max_size=8)), context=st.dictionaries(NAMES, SCALARS))
def test_render_leaves_a_structure_without_templates_unchanged(value: Any, context: Any) -> None:
    assert render(value, context) == value


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf (empty containers included) of a nested value."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaves(v, (*path, k))]
    if isinstance(value, list) and value:
        return [leaf for i, v in enumerate(value) for leaf in leaves(v, (*path, str(i)))]
    return [(".".join(path), value)]


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(NAMES, json_like(NAMES), min_size=1, max_size=5))
def test_lookup_finds_every_leaf_by_its_dotted_path(data: dict[str, Any]) -> None:
    for path, value in leaves(data):
        assert lookup(data, path) == value
        assert lookup(data, path, strict=True) == value
        assert render("{{ " + path + " }}", data) == value  # an exact path keeps the type
    assert lookup(data, "not-a-name") is None
    with pytest.raises(KeyError):
        lookup(data, "not-a-name", strict=True)
