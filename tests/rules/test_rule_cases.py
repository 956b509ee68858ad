"""Every test case written in the shipped rule files runs here, one pytest test per case."""

from __future__ import annotations

import pytest
from support import RULES

from outreach.rulebook import RuleBook, load_rulebook
from outreach.ruletests import run_case

_BOOK = load_rulebook(RULES)
_CASES = [
    pytest.param(spec.id, i, id=f"{spec.id}: {case.name}")
    for spec, _ in sorted(_BOOK.specs.values(), key=lambda pair: pair[0].id)
    for i, case in enumerate(spec.tests)
]


@pytest.mark.parametrize(("rule_id", "index"), _CASES)
def test_rule_file_case(book: RuleBook, rule_id: str, index: int) -> None:
    spec, doc = book.specs[rule_id]
    case = spec.tests[index]
    result = run_case(book, spec, case, f"{doc.path}:{doc.where(('tests', index))[0]}")
    assert result.passed, "\n".join([f"{result.location}: {case.name}", *result.problems])


def test_every_shipped_rule_documents_itself_with_cases(book: RuleBook) -> None:
    thin = {
        rule_id: len(spec.tests) for rule_id, (spec, _) in book.specs.items() if len(spec.tests) < 5
    }
    assert not thin, f"rules with fewer than 5 test cases: {thin}"


def test_a_wrong_expectation_fails_with_a_readable_diff(book: RuleBook) -> None:
    spec, doc = book.specs["shipment-delay"]
    case = spec.tests[0]
    wrong = case.model_copy(
        update={"expect": case.expect.model_copy(update={"actions": [{"type": "grant_credit"}]})}
    )
    result = run_case(book, spec, wrong, doc.path)
    assert not result.passed
    assert result.problems[0].startswith("actions: expected 1, got 0")
