"""Loading a rules folder: every problem located (file, line, field), all reported at once, and
the ``outreach rules check`` / ``outreach rules test`` commands around it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support import NOTE_TEMPLATE, RULES, minimal_folder
from typer.testing import CliRunner

from outreach.cli import app
from outreach.rulebook import RuleBook, describe, load_rulebook
from outreach.rules.yamlfile import Problem, RuleFileError

RULE = """\
id: probe
owner: qa@example.com
description: a test rule
trigger: payment.failed
when: data.amount > 0
playbook: notify
params:
  template: note
  purpose: transactional
"""


def make_folder(tmp_path: Path, **files: str | None) -> Path:
    """A ``rules`` folder: shipped policy, the ``note`` template, then ``files`` (name with
    ``__`` for ``/`` and ``_yaml`` for ``.yaml``; ``None`` deletes)."""
    folder = minimal_folder(tmp_path)
    for name, text in files.items():
        path = folder / name.replace("__", "/").replace("_yaml", ".yaml")
        if text is None:
            path.unlink()
        else:
            path.write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def problems(folder: Path) -> list[Problem]:
    with pytest.raises(RuleFileError) as info:
        load_rulebook(folder)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def only(folder: Path) -> Problem:
    [problem] = problems(folder)
    return problem


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line of ``text`` that contains ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


# --- the shipped folder -----------------------------------------------------------------------


def test_the_shipped_rules_load_without_problems(book: RuleBook) -> None:
    rows = {row["id"]: row for row in describe(book)}
    assert set(rows) >= {"payment-recovery", "renewal-save", "shipment-delay", "usage-decline"}
    assert all(row["file"] == f"rules/{row['file'].split('/')[-1]}" for row in rows.values())
    assert rows["usage-decline"]["trigger"] == "usage.reported"
    assert rows["renewal-save"]["holdout"] == 10.0
    assert book.templates.ids() >= {"shipment_delay", "payment_retry_notice", "renewal_offer"}
    assert len(book.fingerprint) == 12


def test_a_writable_copy_loads_like_the_original(rules_copy: Path, book: RuleBook) -> None:
    copy = load_rulebook(rules_copy)
    assert copy.fingerprint == book.fingerprint
    assert describe(copy) == describe(book)


def test_a_minimal_folder_loads(tmp_path: Path) -> None:
    book = load_rulebook(make_folder(tmp_path, probe_yaml=RULE))
    assert list(book.specs) == ["probe"]
    assert book.specs["probe"][1].path == "rules/probe.yaml"


# --- YAML -------------------------------------------------------------------------------------


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    text = RULE.replace("description: a test rule", "description: a test: rule")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.path, problem.line, problem.field) == ("rules/probe.yaml", 3, "")
    assert problem.col == len("description: a test:")
    assert problem.message.startswith("YAML: ")


def test_unclosed_bracket_is_reported_as_yaml(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path, probe_yaml=RULE + "let: {a: 1\n"))
    assert problem.path == "rules/probe.yaml" and problem.message.startswith("YAML: ")
    assert problem.line >= line_of(RULE + "let: {a: 1\n", "let:")


def test_duplicate_key_is_located_at_the_second_one(tmp_path: Path) -> None:
    text = RULE + "owner: someone-else@example.com\n"
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.path, problem.line) == ("rules/probe.yaml", line_of(text, "owner:", 2))
    assert 'duplicate key "owner"' in problem.message


def test_a_rule_file_must_be_a_mapping(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path, probe_yaml="- id: probe\n"))
    assert problem.path == "rules/probe.yaml" and "must be a mapping" in problem.message


# --- rule fields ------------------------------------------------------------------------------


def test_unknown_top_level_field_is_located(tmp_path: Path) -> None:
    text = RULE.replace("playbook: notify", "colour: red\nplaybook: notify")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.path, problem.line, problem.field) == (
        "rules/probe.yaml",
        line_of(text, "colour"),
        "colour",
    )
    assert "not a known field" in problem.message


def test_bad_duration_is_located(tmp_path: Path) -> None:
    text = RULE + "cooldown: 24x\n"
    found = problems(make_folder(tmp_path, probe_yaml=text))
    assert {p.line for p in found} == {line_of(text, "cooldown")}
    assert all(p.field.startswith("cooldown") for p in found)
    assert any(p.field == "cooldown" and "'24x' is not a duration" in p.message for p in found)
    assert any("24h" in p.message for p in found)  # says what to write


@pytest.mark.parametrize(
    ("edit", "field"),
    [("cooldown: 24x", "cooldown"), ("cooldown:\n  period: 3 days\n  per: key", "cooldown.period")],
)
def test_bad_duration_is_one_problem_in_the_analysts_words(
    tmp_path: Path, edit: str, field: str
) -> None:
    text = RULE + edit + "\n"
    problem = only(make_folder(tmp_path, probe_yaml=text))
    key = field.rpartition(".")[2]
    assert (problem.field, problem.line) == (field, line_of(text, key + ":"))


def test_holdout_over_100_percent_is_located(tmp_path: Path) -> None:
    text = RULE + "holdout: 150%\n"
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "holdout"), "holdout")
    assert "between 0% and 100%" in problem.message


def test_unknown_trigger_lists_the_event_types(tmp_path: Path) -> None:
    text = RULE.replace("trigger: payment.failed", "trigger: payment.refunded")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "trigger"), "trigger")
    assert "'payment.refunded' is not an event type" in problem.message
    assert "payment.failed" in problem.message


def test_unknown_playbook_lists_the_playbooks(tmp_path: Path) -> None:
    text = RULE.replace("playbook: notify", "playbook: notifi")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "playbook"), "playbook")
    assert "unknown playbook 'notifi'" in problem.message and "notify" in problem.message


def test_params_missing_a_required_field_is_located_at_params(tmp_path: Path) -> None:
    text = RULE.replace("  purpose: transactional\n", "")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "params:"), "params.purpose")
    assert "is required" in problem.message


def test_params_with_a_typo_key_is_located_at_the_key(tmp_path: Path) -> None:
    text = RULE.replace("  template: note", "  template: note\n  tempalte: note")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.col, problem.field) == (
        line_of(text, "tempalte"),
        3,
        "params.tempalte",
    )


def test_params_with_a_bad_value_is_located(tmp_path: Path) -> None:
    text = RULE.replace("purpose: transactional", "purpose: promotional")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "purpose"), "params.purpose")
    assert "'transactional'" in problem.message and "'marketing'" in problem.message


def test_a_template_named_in_params_must_exist(tmp_path: Path) -> None:
    text = RULE.replace("template: note", "template: nope")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (line_of(text, "template:"), "params.template")
    assert "no template 'nope'" in problem.message and "known: note" in problem.message


def test_a_rule_id_used_twice_across_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, a_yaml=RULE, b_yaml=RULE)
    problem = only(folder)
    assert (problem.path, problem.line, problem.field) == ("rules/b.yaml", 1, "id")
    assert "'probe' is already used by rules/a.yaml" in problem.message


def test_a_bad_rule_id_is_located(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path, probe_yaml=RULE.replace("id: probe", "id: Probe Rule")))
    assert (problem.line, problem.field) == (1, "id")


# --- expressions ------------------------------------------------------------------------------


def test_expression_error_is_located_at_when_with_a_caret(tmp_path: Path) -> None:
    text = RULE.replace("when: data.amount > 0", "when: 7d > 1h and data.amunt > 0")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.path, problem.line, problem.field) == ("rules/probe.yaml", 5, "when")
    assert "(did you mean 'amount'?)" in problem.message
    assert problem.excerpt.splitlines() == [
        "    7d > 1h and data.amunt > 0",
        "    " + " " * len("7d > 1h and ") + "^" * len("data.amunt"),
    ]
    assert str(problem).startswith("rules/probe.yaml:5:1: when: ")


def test_expression_errors_in_let_key_audience_and_cancel_on(tmp_path: Path) -> None:
    text = RULE + textwrap.dedent(
        """\
        key: data.invoce_id
        let:
          late: data.amount > 1h
        audience:
          when: customer.tier == "gold"
        cancel_on:
          - trigger: payment.succeeded
            key: data.attempt
        """
    )
    found = problems(make_folder(tmp_path, probe_yaml=text))
    by_field = {p.field: p for p in found}
    assert set(by_field) == {"key", "let.late", "audience.when", "cancel_on[0].key"}
    assert by_field["key"].line == line_of(text, "key: data")
    assert by_field["let.late"].line == line_of(text, "  late:")
    assert by_field["audience.when"].line == line_of(text, "  when:")
    assert by_field["cancel_on[0].key"].line == line_of(text, "key: data.attempt")
    assert "did you mean 'invoice_id'" in by_field["key"].message
    assert "'gold' can never match" in by_field["audience.when"].message
    assert "'attempt' is not a field of data (payment.succeeded data)" in (
        by_field["cancel_on[0].key"].message
    )


def test_when_must_be_a_condition(tmp_path: Path) -> None:
    text = RULE.replace("when: data.amount > 0", "when: data.amount * 2")
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert problem.field == "when" and "must be true/false" in problem.message


def test_signaled_naming_an_unknown_rule(tmp_path: Path) -> None:
    text = RULE.replace("when: data.amount > 0", 'when: signaled("usage-decine", 7d)')
    problem = only(make_folder(tmp_path, probe_yaml=text))
    assert (problem.line, problem.field) == (5, "when")
    assert "no rule has id 'usage-decine'" in problem.message
    assert problem.excerpt.splitlines()[1] == "    " + " " * 9 + "^" * len('"usage-decine"')


def test_signaled_may_name_a_rule_of_another_file(tmp_path: Path) -> None:
    other = RULE.replace("id: probe", "id: other-rule")
    text = RULE.replace("when: data.amount > 0", 'when: signaled("other-rule", 7d)')
    book = load_rulebook(make_folder(tmp_path, probe_yaml=text, other_yaml=other))
    assert set(book.specs) == {"probe", "other-rule"}


# --- policy, templates, folder ----------------------------------------------------------------


def test_missing_policy_file(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path, probe_yaml=RULE, policy_yaml=None))
    assert (problem.path, problem.line) == ("rules/policy.yaml", 1)
    assert "needs policy.yaml" in problem.message


def test_policy_with_a_bad_quiet_hours_time(tmp_path: Path) -> None:
    policy = (RULES / "policy.yaml").read_text(encoding="utf-8")
    assert 'start: "21:00"' in policy
    broken = policy.replace('start: "21:00"', 'start: "25:00"')
    problem = only(make_folder(tmp_path, probe_yaml=RULE, policy_yaml=broken))
    assert (problem.path, problem.line, problem.field) == (
        "rules/policy.yaml",
        line_of(broken, "quiet_hours"),
        "contact.quiet_hours.start",
    )
    assert problem.col == broken.splitlines()[problem.line - 1].index("start") + 1


def test_policy_with_an_unknown_key(tmp_path: Path) -> None:
    policy = (RULES / "policy.yaml").read_text(encoding="utf-8") + "\nfeatures: {beta: true}\n"
    problem = only(make_folder(tmp_path, probe_yaml=RULE, policy_yaml=policy))
    assert (problem.line, problem.field) == (line_of(policy, "features:"), "features")


def test_sms_template_over_its_segment_budget(tmp_path: Path) -> None:
    long_note = NOTE_TEMPLATE.replace(
        "Acme: something happened.", "Acme: " + "something happened. " * 12
    )
    problem = only(make_folder(tmp_path, probe_yaml=RULE, templates__note_yaml=long_note))
    assert (problem.path, problem.line, problem.field) == (
        "rules/templates/note.yaml",
        line_of(long_note, 'en: "Acme'),
        "sms.text.en",
    )
    assert "2 SMS segments" in problem.message and "the budget is 1" in problem.message


def test_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    problem = only(tmp_path / "nowhere")
    assert problem.path == str(tmp_path / "nowhere") and "not a readable rules folder" in (
        problem.message
    )


def test_a_folder_without_rule_files(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path))
    assert "no rule files" in problem.message


# --- everything at once -----------------------------------------------------------------------


def test_all_problems_of_a_folder_are_reported_at_once(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        a_yaml=RULE.replace("id: probe", "id: rule-a").replace("data.amount", "data.amout"),
        b_yaml=RULE.replace("id: probe", "id: rule-b").replace("playbook: notify", "playbook: x"),
        c_yaml=RULE.replace("id: probe", "id: rule-c") + "holdout: 150%\n",
        d_yaml="id: rule-d\nowner: [unclosed\n",
        e_yaml=RULE.replace("id: probe", "id: rule-e").replace("payment.failed", "nope.nope"),
    )
    found = problems(folder)
    assert [(p.path, p.field) for p in found] == [
        ("rules/a.yaml", "when"),
        ("rules/b.yaml", "playbook"),
        ("rules/c.yaml", "holdout"),
        ("rules/d.yaml", ""),
        ("rules/e.yaml", "trigger"),
    ]
    assert found == sorted(found)


def test_a_broken_template_does_not_hide_the_valid_ones(tmp_path: Path) -> None:
    problem = only(make_folder(tmp_path, probe_yaml=RULE, templates__other_yaml="id: other\n"))
    assert problem.path == "rules/templates/other.yaml"


def test_a_broken_policy_does_not_hide_rule_problems(tmp_path: Path) -> None:
    policy = (RULES / "policy.yaml").read_text(encoding="utf-8").replace("21:00", "25:00")
    text = RULE.replace("data.amount > 0", "data.amunt > 0").replace(
        "template: note", "template: x"
    )
    found = problems(make_folder(tmp_path, probe_yaml=text, policy_yaml=policy))
    assert {p.field for p in found} == {"contact.quiet_hours.start", "when", "params.template"}


@pytest.mark.parametrize(
    "edit",
    [
        "cooldown: 1000000000d",  # OverflowError in parse_duration
        "when: count('payment.failed', 1000000000d) > 0",  # OverflowError in the checker
        "when: hours(*data) > 1h",  # SyntaxError from Checker.text
        "when: __percent__(data) > 1",  # AssertionError from _literal_number
    ],
)
def test_load_rulebook_only_raises_rule_file_error(tmp_path: Path, edit: str) -> None:
    key = edit.split(":")[0]
    text = "".join(line for line in RULE.splitlines(True) if not line.startswith(key)) + edit
    problem = only(make_folder(tmp_path, probe_yaml=text + "\n"))
    assert problem.field == key and problem.line == line_of(text, key + ":")


# --- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_rules_check_on_the_shipped_folder(book: RuleBook) -> None:
    result = runner.invoke(app, ["rules", "check", str(RULES)], env=WIDE)
    assert result.exit_code == 0, result.output
    for rule_id in book.specs:
        assert rule_id in result.stdout
    assert f"ok: {len(book.specs)} rules, {len(book.templates.ids())} templates" in result.stdout
    assert result.stderr == ""


def test_rules_check_on_a_broken_folder_exits_2_with_locations(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        a_yaml=RULE.replace("id: probe", "id: rule-a").replace("data.amount", "data.amout"),
        b_yaml=RULE.replace("id: probe", "id: rule-b") + "holdout: 150%\n",
    )
    result = runner.invoke(app, ["rules", "check", str(folder)], env=WIDE)
    assert result.exit_code == 2
    assert "2 problem(s); nothing was run." in result.stderr
    assert "rules/a.yaml:5:1: when: " in result.stderr
    assert f"rules/b.yaml:{line_of(RULE, 'purpose') + 1}:1: holdout: " in result.stderr
    assert "    data.amout > 0" in result.stderr  # the excerpt, with its caret below
    assert "ok:" not in result.stdout


def test_rules_check_on_a_missing_folder_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rules", "check", str(tmp_path / "nope")], env=WIDE)
    assert result.exit_code == 2 and "not a readable rules folder" in result.stderr


def test_rules_test_on_the_shipped_folder(book: RuleBook) -> None:
    cases = sum(len(spec.tests) for spec, _ in book.specs.values())
    result = runner.invoke(app, ["rules", "test", str(RULES)], env=WIDE)
    if cases == 0:
        assert result.exit_code == 1
        assert "no test cases matched" in result.stderr
        assert "0 passed, 0 failed" in result.stdout
    else:
        assert result.exit_code == 0, result.output
        assert f"{cases} passed, 0 failed" in result.stdout


CASES = """\
tests:
  - name: a big failure fires
    events:
      - {type: payment.failed, at: "2026-03-02T15:00:00Z",
         data: {payment_id: p1, invoice_id: in_1, amount: 500, currency: USD,
                decline_code: insufficient_funds, attempt: 1}}
    expect:
      signals: [{rule_id: probe, key: null}]
  - name: a zero failure does not fire
    events:
      - {type: payment.failed, at: "2026-03-02T15:00:00Z",
         data: {payment_id: p1, invoice_id: in_1, amount: 0, currency: USD,
                decline_code: insufficient_funds, attempt: 1}}
    expect:
      signals: {signals}
"""


@pytest.mark.parametrize(("second", "code"), [("[]", 0), ("[{rule_id: probe}]", 1)])
def test_rules_test_runs_the_cases_of_a_rule_file(tmp_path: Path, second: str, code: int) -> None:
    folder = make_folder(tmp_path, probe_yaml=RULE + CASES.replace("{signals}", second))
    result = runner.invoke(app, ["rules", "test", str(folder)], env=WIDE)
    assert result.exit_code == code, result.output
    assert "PASS probe: a big failure fires  rules/probe.yaml:11" in result.stdout
    if code == 0:
        assert "2 passed, 0 failed" in result.stdout
    else:
        assert "FAIL probe: a zero failure does not fire" in result.stdout
        assert "signals: expected 1, got 0" in result.stdout
        assert "1 passed, 1 failed" in result.stdout
    only_first = runner.invoke(app, ["rules", "test", str(folder), "-k", "big"], env=WIDE)
    assert only_first.exit_code == 0 and "1 passed, 0 failed" in only_first.stdout


# --- compliance of marketing templates (rules check) -------------------------------------

MARKETING = RULE.replace("purpose: transactional", "purpose: marketing")
GOOD = """\
id: note
sms:
  max_segments: 2
  text:
    en: "Acme: something happened. Reply STOP to opt out."
email:
  subject:
    en: "Something happened"
  body:
    en: |
      Hello, something happened.
      Acme Inc., 100 Market Street, San Francisco, CA 94105, USA
      Unsubscribe in one click: {{ unsubscribe_url }}
"""


def test_a_compliant_marketing_template_loads(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, probe_yaml=MARKETING, templates__note_yaml=GOOD)
    assert "probe" in load_rulebook(folder).playbooks


def test_transactional_templates_need_none_of_it(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, probe_yaml=RULE)  # the plain note: no STOP, no link
    assert "probe" in load_rulebook(folder).playbooks


@pytest.mark.parametrize(
    ("cut", "channel", "says"),
    [
        ("      Unsubscribe in one click: {{ unsubscribe_url }}\n", "email", "unsubscribe link"),
        ("      Acme Inc., 100 Market Street, San Francisco, CA 94105, USA\n", "email", "postal"),
        (" Reply STOP to opt out.", "sms", "how to opt out"),
    ],
)
def test_a_marketing_template_missing_a_required_part_is_refused_where_it_is_written(
    tmp_path: Path, cut: str, channel: str, says: str
) -> None:
    text = GOOD.replace(cut, "")
    assert text != GOOD
    folder = make_folder(tmp_path, probe_yaml=MARKETING, templates__note_yaml=text)
    [problem] = problems(folder)
    assert problem.path == "rules/templates/note.yaml"
    field = "email.body.en" if channel == "email" else "sms.text.en"
    assert problem.field == field and says in problem.message
    assert problem.line == (10 if channel == "email" else 5)


def test_the_shipped_marketing_templates_carry_the_link_address_and_stop() -> None:
    book = load_rulebook(Path(__file__).resolve().parents[2] / "rules")
    assert book.templates.marketing_problems("renewal_offer", book.policy.brand.model_dump()) == []
