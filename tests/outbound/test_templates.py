"""Message templates: file validation with locations, sandboxed rendering, locales, filters."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from outreach.errors import TemplateRenderError
from outreach.outbound.segments import SegmentInfo
from outreach.outbound.templates import Rendered, TemplateCatalog
from outreach.rules.yamlfile import Problem, RuleFileError

BRAND = {"name": "Acme"}

SHIPMENT_DELAY = """\
id: shipment_delay
description: Late parcel notice
sample:
  order_id: ORD-1001
  new_estimate: "2026-03-04T15:00:00Z"
sms:
  max_segments: 2
  text:
    en: "{{ brand.name }}: order {{ order_id }} is late; new estimate {{ new_estimate | when }}."
    fr: "{{ brand.name }} : commande {{ order_id }} en retard, prévue {{ new_estimate | when }}."
email:
  subject:
    en: "Your order {{ order_id }}
      is running late"
    fr: "Votre commande {{ order_id }} est en retard"
  body:
    en: |

      Hello,
      {% if order_id %}
      Order {{ order_id }} now arrives {{ new_estimate | day }}.
      {% endif %}
      The {{ brand.name }} team
    fr: "Bonjour, la commande {{ order_id }} arrive {{ new_estimate | day }}."
"""


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")


def load(folder: Path, **files: str) -> TemplateCatalog:
    for name, text in files.items():
        write(folder, f"{name}.yaml", text)
    return TemplateCatalog.load(folder, display_root=folder)


def problems(folder: Path, **files: str) -> list[Problem]:
    with pytest.raises(RuleFileError) as info:
        load(folder, **files)
    return info.value.problems


def context() -> dict[str, Any]:
    return {"brand": BRAND, "order_id": "ORD-7", "new_estimate": "2026-03-04T15:00:00Z"}


# --- loading -------------------------------------------------------------------------------


def test_loads_and_describes_the_catalog(tmp_path: Path) -> None:
    catalog = load(tmp_path, shipment_delay=SHIPMENT_DELAY)
    assert catalog.ids() == frozenset({"shipment_delay"})
    assert catalog.channels("shipment_delay") == frozenset({"sms", "email"})
    assert catalog.has("shipment_delay", "sms") and catalog.has("shipment_delay", "email")
    assert not catalog.has("shipment_delay", "push") and not catalog.has("nope", "sms")
    assert catalog.max_segments("shipment_delay") == 2
    assert catalog.max_segments("nope") is None
    assert catalog.check(BRAND) == []


def test_a_missing_folder_is_an_empty_catalog(tmp_path: Path) -> None:
    catalog = TemplateCatalog.load(tmp_path / "absent")
    assert catalog.ids() == frozenset()


def test_yml_files_load_too_and_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", SHIPMENT_DELAY)
    write(tmp_path, "notes.txt", "not a template")
    assert TemplateCatalog.load(tmp_path).ids() == frozenset({"shipment_delay"})


def test_unknown_key_is_located(tmp_path: Path) -> None:
    text = """\
        id: t
        sms:
          max_segments: 1
          txt:
            en: hi
    """
    found = problems(tmp_path, t=text)
    assert [(p.path, p.line, p.col, p.field) for p in found if p.field == "sms.txt"] == [
        ("t.yaml", 4, 3, "sms.txt")
    ]
    assert any(p.field == "sms.txt" and "not a known field" in p.message for p in found)
    assert any(p.field == "sms.text" and "required" in p.message for p in found)


def test_missing_default_locale_is_located_at_the_variants(tmp_path: Path) -> None:
    text = """\
        id: t
        sms:
          max_segments: 1
          text:
            fr: bonjour
    """
    [problem] = problems(tmp_path, t=text)
    assert str(problem).startswith("t.yaml:4:3: sms.text: has no 'en' variant")


def test_the_default_locale_is_a_parameter(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", "id: t\nsms:\n  max_segments: 1\n  text:\n    fr: bonjour\n")
    catalog = TemplateCatalog.load(tmp_path, default_locale="fr")
    assert catalog.render("t", "sms", "en", {}).body == "bonjour"


def test_jinja_syntax_error_is_located_at_the_variant_key(tmp_path: Path) -> None:
    text = """\
        id: t
        email:
          subject:
            en: Hi
          body:
            en: |
              Hello
              {{ order_id
    """
    [problem] = problems(tmp_path, t=text)
    assert (problem.line, problem.col, problem.field) == (6, 5, "email.body.en")
    assert "line 2 of the text" in problem.message


def test_unknown_filter_is_a_load_error(tmp_path: Path) -> None:
    text = "id: t\nsms:\n  max_segments: 1\n  text:\n    en: '{{ x | shout }}'\n"
    [problem] = problems(tmp_path, t=text)
    assert (problem.line, problem.field) == (5, "sms.text.en")
    assert "shout" in problem.message


def test_duplicate_id_is_located_at_the_second_file(tmp_path: Path) -> None:
    second = "description: copy\nid: shipment_delay\nsms:\n  max_segments: 1\n  text:\n    en: x\n"
    [problem] = problems(tmp_path, a=SHIPMENT_DELAY, b=second)
    assert (problem.path, problem.line, problem.field) == ("b.yaml", 2, "id")
    assert "a.yaml" in problem.message


def test_problems_from_every_file_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        a="id: a\n",
        b="id: Bad-Id\nsms:\n  max_segments: 0\n  text:\n    en: x\n",
        c="id: c\nsms: [\n",
    )
    located = {(p.path, p.line, p.field) for p in found}
    assert ("a.yaml", 1, "") in located  # no channel
    assert ("b.yaml", 1, "id") in located
    assert ("b.yaml", 3, "sms.max_segments") in located
    assert any(p.path == "c.yaml" and p.message.startswith("YAML:") for p in found)


def test_email_subject_and_body_need_the_same_locales(tmp_path: Path) -> None:
    text = """\
        id: t
        email:
          subject:
            en: Hi
            fr: Salut
          body:
            en: Hello
    """
    [problem] = problems(tmp_path, t=text)
    assert (problem.line, problem.field) == (6, "email.body")
    assert "no 'fr' variant" in problem.message


def test_locale_keys_must_be_locales(tmp_path: Path) -> None:
    text = "id: t\nsms:\n  max_segments: 1\n  text:\n    en: a\n    xx: b\n    fr: c\n    FR: d\n"
    found = problems(tmp_path, t=text)
    assert [(p.line, p.field) for p in found] == [(6, "sms.text.xx"), (8, "sms.text.FR")]
    assert "twice" in found[1].message


def test_empty_file_is_a_problem(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, t="")
    assert "empty" in problem.message


# --- check() -------------------------------------------------------------------------------


def test_check_reports_an_sms_over_budget_at_the_variant(tmp_path: Path) -> None:
    text = """\
        id: t
        sms:
          max_segments: 1
          text:
            en: "{{ brand.name }} {{ 'a' * 200 }}"
            fr: "court"
    """
    catalog = load(tmp_path, t=text)
    [problem] = catalog.check(BRAND)
    where = (problem.path, problem.line, problem.col, problem.field)
    assert where == ("t.yaml", 5, 5, "sms.text.en")
    assert problem.message.startswith(
        "renders to 2 SMS segments (GSM-7, 205 septets) but the budget is 1"
    )
    rendered = catalog.render("t", "sms", "en", {"brand": BRAND})
    assert rendered.segments == SegmentInfo("GSM-7", 205, 2)  # render reports, never enforces


def test_check_reports_render_failures_at_the_failing_part(tmp_path: Path) -> None:
    text = """\
        id: t
        sample:
          order_id: 1
        email:
          subject:
            en: "Order {{ order_id }} {{ missing }}"
          body:
            en: "{{ order_id }}"
    """
    [problem] = load(tmp_path, t=text).check(BRAND)
    assert (problem.line, problem.field) == (6, "email.subject.en")
    assert "'missing' is undefined" in problem.message


def test_check_uses_the_variant_locale_and_a_sample_customer(tmp_path: Path) -> None:
    text = """\
        id: t
        sample:
          at: "2026-03-04T15:00:00Z"
          customer: {timezone: America/New_York, name: Ann}
        sms:
          max_segments: 1
          text:
            en: "{{ customer.name }} {{ customer.locale }} {{ at | when }}"
            fr: "{{ customer.name }} {{ customer.locale }} {{ at | when }}"
    """
    catalog = load(tmp_path, t=text)
    assert catalog.check(BRAND) == []


# --- rendering -----------------------------------------------------------------------------


def test_locale_fallback_exact_then_language_then_default(tmp_path: Path) -> None:
    text = """\
        id: t
        sms:
          max_segments: 1
          text:
            en: english
            fr: français
            fr-CA: québécois
    """
    catalog = load(tmp_path, t=text)
    picked = {
        wanted: (r.locale, r.body)
        for wanted in ("fr-CA", "fr_ca", "FR-be", "fr", "pt-BR", "", None)
        for r in [catalog.render("t", "sms", wanted, {})]
    }
    assert picked == {
        "fr-CA": ("fr-CA", "québécois"),
        "fr_ca": ("fr-CA", "québécois"),
        "FR-be": ("fr", "français"),
        "fr": ("fr", "français"),
        "pt-BR": ("en", "english"),
        "": ("en", "english"),
        None: ("en", "english"),
    }


def test_render_sms_and_email(tmp_path: Path) -> None:
    catalog = load(tmp_path, shipment_delay=SHIPMENT_DELAY)
    sms = catalog.render("shipment_delay", "sms", "en-US", context())
    body = "Acme: order ORD-7 is late; new estimate Wed, Mar 4, 3:00 PM."
    assert sms == Rendered(
        "shipment_delay", "sms", "en", None, body, SegmentInfo("GSM-7", len(body), 1)
    )
    email = catalog.render("shipment_delay", "email", "en", context())
    assert email.subject == "Your order ORD-7 is running late"
    assert email.body == "Hello,\nOrder ORD-7 now arrives Wed, Mar 4.\nThe Acme team"
    assert email.segments is None


def test_unknown_template_or_channel_raises(tmp_path: Path) -> None:
    catalog = load(tmp_path, shipment_delay=SHIPMENT_DELAY)
    with pytest.raises(TemplateRenderError, match="no template 'nope'"):
        catalog.render("nope", "sms", "en", context())
    with pytest.raises(TemplateRenderError, match="no push text"):
        catalog.render("shipment_delay", "push", "en", context())


def test_undefined_variables_raise(tmp_path: Path) -> None:
    catalog = load(tmp_path, shipment_delay=SHIPMENT_DELAY)
    with pytest.raises(TemplateRenderError, match="'order_id' is undefined"):
        catalog.render("shipment_delay", "sms", "en", {"brand": BRAND, "new_estimate": "x"})


def single(tmp_path: Path, expression: str) -> TemplateCatalog:
    quoted = json.dumps(expression)  # a JSON string is a YAML double-quoted scalar
    text = f"id: t\nsms:\n  max_segments: 3\n  text:\n    en: {quoted}\n    fr: {quoted}\n"
    write(tmp_path, "t.yaml", text)
    return TemplateCatalog.load(tmp_path)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "attribute '__class__' of 'str' object is unsafe"),
        ("{{ x.__class__.__base__.__subclasses__() }}", "'__class__' of 'int' object is unsafe"),
        ("{{ items.append(4) }}", "attribute 'append' of 'list' object is unsafe"),
        ("{{ 'a' * 1000000 }}", "repetition result too large"),
        ("{{ 10 ** 100000 }}", "exponent too large"),
        ("{{ 1 / 0 }}", "division by zero"),
    ],
)
def test_the_sandbox_refuses_unsafe_or_failing_templates(
    tmp_path: Path, expression: str, message: str
) -> None:
    catalog = single(tmp_path, expression)
    with pytest.raises(TemplateRenderError) as info:
        catalog.render("t", "sms", "en", {"x": 1, "items": [1, 2, 3]})
    assert str(info.value).startswith("template 't' (sms, en): line 1 of the text: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("expression", "locale", "customer", "expected"),
    [
        ("{{ at | when }}", "en", None, "Wed, Mar 4, 3:00 PM"),
        ("{{ at | when }}", "en", {"timezone": "America/New_York"}, "Wed, Mar 4, 10:00 AM"),
        ("{{ at | when }}", "fr", {"timezone": "Europe/Paris"}, "mer. 4 mars, 16:00"),
        ("{{ at | day }}", "en", {"timezone": "Asia/Tokyo"}, "Thu, Mar 5"),
        ("{{ at | date }}", "en", {"timezone": "UTC"}, "Mar 4, 2026"),
        ('{{ "2026-03-04" | date }}', "fr", None, "4 mars 2026"),
        ('{{ 1999 | money("USD") }}', "en", None, "$19.99"),
        ('{{ 500 | money("JPY") }}', "en", None, "¥500"),
        ('{{ 1999 | money("EUR") }}', "fr", None, "19,99 €"),
        ("{{ price | money }}", "en", None, "$7.50"),
        ("{{ 20 | percent }}", "en", None, "20%"),
        ("{{ 12.5 | percent }}", "en", None, "12.5%"),
        ("{{ 20 | percent }}", "fr", None, "20 %"),
    ],
)
def test_filters(
    tmp_path: Path, expression: str, locale: str, customer: dict[str, str] | None, expected: str
) -> None:
    catalog = single(tmp_path, expression)
    data: dict[str, Any] = {
        "at": "2026-03-04T15:00:00Z",
        "price": {"amount": 750, "currency": "USD"},
    }
    if customer is not None:
        data["customer"] = customer
    rendered = catalog.render("t", "sms", locale, data)
    assert rendered.body == expected
    assert rendered.segments is not None and rendered.segments.encoding == "GSM-7"


def test_when_accepts_aware_datetimes_and_customer_objects(tmp_path: Path) -> None:
    class Customer:
        timezone = "America/New_York"

    catalog = single(tmp_path, "{{ at | when }}")
    at = datetime.fromisoformat("2026-07-04T15:00:00+00:00")
    assert catalog.render("t", "sms", "en", {"at": at, "customer": Customer()}).body == (
        "Sat, Jul 4, 11:00 AM"
    )


@pytest.mark.parametrize(
    ("expression", "data", "message"),
    [
        ("{{ at | when }}", {"at": "2026-03-04T15:00:00"}, "without offset"),
        ("{{ at | when }}", {"at": datetime(2026, 3, 4, 15)}, "without offset"),
        ("{{ at | when }}", {"at": "2026-03-04"}, "time of day"),
        ("{{ at | when }}", {"at": "soon"}, "RFC 3339"),
        (
            "{{ at | when }}",
            {"at": "2026-03-04T15:00:00Z", "customer": {"timezone": "Mars/Base"}},
            "timezone",
        ),
        ('{{ 19.99 | money("USD") }}', {}, "integer minor units"),
        ('{{ 1999 | money("XXY") }}', {}, "currency"),
        ('{{ "20" | percent }}', {}, "number"),
    ],
)
def test_filters_refuse_bad_values(
    tmp_path: Path, expression: str, data: dict[str, Any], message: str
) -> None:
    catalog = single(tmp_path, expression)
    with pytest.raises(TemplateRenderError, match=message):
        catalog.render("t", "sms", "en", data)


def test_empty_render_is_an_error(tmp_path: Path) -> None:
    catalog = single(tmp_path, "{{ blank }}")
    with pytest.raises(TemplateRenderError, match="empty"):
        catalog.render("t", "sms", "en", {"blank": "  "})


def test_a_file_instead_of_a_folder_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", SHIPMENT_DELAY)
    with pytest.raises(RuleFileError, match="is not a templates folder"):
        TemplateCatalog.load(tmp_path / "t.yaml")
