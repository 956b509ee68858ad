"""The rule expression language: sugar, null-safety, static checks with located errors, the
whitelist, and two properties (only ``ExprError`` escapes ``check``; arithmetic agrees with
Python's).

Expressions are compiled the way ``outreach.rules.compile`` does it: ``check`` in a ``Scope``
built from the trigger's models, then ``build_function`` with the rule parameters.
"""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outreach.events import DATA_MODELS, Event, event_from_obj
from outreach.rules.compile import CUSTOMER, PARAMS
from outreach.rules.expressions import (
    CompiledExpr,
    ExprError,
    Scope,
    build_function,
    check,
)
from outreach.rules.exprtypes import model_type
from outreach.rules.functions import Registry, envelope_type, standard_functions
from outreach.rules.state import CustomerView, Profile

NOW = datetime(2026, 3, 2, 10, tzinfo=UTC)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def scope(trigger: str = "payment.failed") -> Scope:
    """The scope of a rule's ``when`` (as ``compile._RuleCompiler`` builds it)."""
    return Scope(
        data=model_type(DATA_MODELS[trigger], f"{trigger} data"),
        event=envelope_type(trigger),
        customer=CUSTOMER,
        functions=standard_functions(),
        trigger=trigger,
        registry=Registry(rule_ids=frozenset({"usage-decline", "payment-recovery"})),
    )


def compiled(source: str, trigger: str = "payment.failed") -> CompiledExpr:
    return check(source, scope(trigger), [])


def error(source: str, trigger: str = "payment.failed") -> ExprError:
    """The ``ExprError`` that ``source`` is refused with."""
    with pytest.raises(ExprError) as info:
        compiled(source, trigger)
    return info.value


def evaluate(source: str, event: Event, profile: Profile | None = None, now: datetime = NOW) -> Any:
    """Compile ``source`` for ``event``'s type and run it on ``event``."""
    constants: list[Any] = []
    expr = check(source, scope(event.type), constants)
    namespace = {f"K{i}": value for i, value in enumerate(constants)}
    fn = build_function("probe", PARAMS, [ast.Return(expr.code)], namespace)
    view = CustomerView(profile or Profile(), {}, "UTC")
    return fn(event, event.data, view, None, now)


def event(type_: str, **data: Any) -> Event:
    return event_from_obj(
        {
            "event_id": "evt_1",
            "type": type_,
            "customer_id": "cus_1",
            "occurred_at": NOW,
            "data": data,
        }
    )


def failed(**overrides: Any) -> Event:
    data = {
        "payment_id": "py_1", "invoice_id": "in_1", "amount": 2900, "currency": "USD",
        "decline_code": "insufficient_funds", "attempt": 2, **overrides,
    }  # fmt: skip
    return event("payment.failed", **data)


def shipment(**overrides: Any) -> Event:
    data = {
        "shipment_id": "sh_1", "order_id": "o_1", "carrier": "ups", "status": "in_transit",
        "promised_delivery": NOW, **overrides,
    }  # fmt: skip
    return event("shipment.updated", **data)


# --- comparisons, membership, sugar -----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("data.amount > 1000", True),
        ("data.amount >= 2900 and data.amount <= 2900", True),
        ("data.amount < 2900", False),
        ("0 < data.attempt <= 2", True),
        ("0 < data.attempt < 2", False),
        ('data.decline_code in ["insufficient_funds", "do_not_honor"]', True),
        ('data.decline_code not in ["insufficient_funds"]', False),
        ('"funds" in data.decline_code', True),
        ('"card" in data.decline_code', False),
        ('data.currency == "USD" and not (data.currency != "USD")', True),
        ("data.amount * 2 - 800 == 5000", True),
        ("data.amount / 100 == 29", True),
        ("data.amount > 60% * 4000", True),  # 0.6 * 4000 = 2400
        ("data.amount > 80% * 4000", False),
        ("50% == 0.5 and 12.5% == 0.125", True),
        ("1.5h == 90m and 2w == 14d and 30s * 2 == 1m and 1d / 2 == 12h", True),
        ("7d / 1d == 7", True),
        ("hours(2) == 120m and days(data.attempt) == 48h and minutes(1.5) == 90s", True),
        ("event.occurred_at == now and now - event.occurred_at == 0s", True),
        ("event.occurred_at + 1d > now and now - 1h < event.occurred_at", True),
        ("true and True and not false and not False", True),
        ("null == None", True),
        ("abs(-5) == 5 and round(2.567, 1) == 2.6 and len(data.currency) == 3", True),
        ('lower(data.currency) == "usd" and upper("usd") == data.currency', True),
        ("(1 if data.amount > 100 else 2) == 1", True),
        ('event.type == "payment.failed" and event.customer_id == "cus_1"', True),
    ],
)
def test_expressions_evaluate(source: str, expected: bool) -> None:
    assert evaluate(source, failed()) is expected


def test_durations_compare_with_timestamps() -> None:
    late = shipment(estimated_delivery=NOW + timedelta(hours=48))
    assert evaluate("data.estimated_delivery - data.promised_delivery >= 48h", late) is True
    assert evaluate("data.estimated_delivery - data.promised_delivery >= 49h", late) is False
    assert evaluate("data.estimated_delivery - data.promised_delivery == 2d", late) is True
    renewal = event(
        "renewal.upcoming", subscription_id="s", plan="p", renews_at=NOW + timedelta(days=10),
        amount=1, currency="USD", auto_renew=False,
    )  # fmt: skip
    assert evaluate("data.renews_at - now <= 14d and data.renews_at - now > 0h", renewal) is True
    assert evaluate("data.renews_at - now <= 14d", renewal, now=NOW - timedelta(days=5)) is False


def test_customer_fields_are_readable() -> None:
    fr = Profile(locale="fr-CA", tier="premium", sms_marketing=True, phone="+33600000000")
    source = (
        'customer.tier == "premium" and customer.language == "fr" and customer.country == "CA"'
        " and customer.consent.sms.marketing and not customer.consent.email.marketing"
        ' and customer.has_phone and not customer.has_email and customer.timezone == "UTC"'
    )
    assert evaluate(source, failed(), fr) is True
    assert evaluate(source, failed(), Profile()) is False


def test_the_static_type_of_an_expression() -> None:
    assert compiled("data.amount > 1").ty.kind == "bool"
    assert compiled("data.amount / 2").ty.kind == "number"
    assert compiled("data.amount / 2").ty.optional  # x / 0 is missing
    assert not compiled("data.amount * 2").ty.optional
    assert compiled("now - event.occurred_at").ty.kind == "duration"
    assert compiled("now + 1d").ty.kind == "datetime"
    assert compiled('["a", "b"]').ty.kind == "list"


# --- null-safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "data.estimated_delivery - data.promised_delivery >= 24h",
        "data.estimated_delivery - data.promised_delivery < 24h",
        "data.estimated_delivery > now",
        "data.estimated_delivery <= now",
        "data.order_value.amount > 0",
        "data.order_value.amount <= 0",
        '"x" in data.exception_code',
        'data.order_value.currency == "USD"',
        "-data.order_value.amount < 0",
        "data.order_value.amount / 0 > 0",
    ],
)
def test_a_comparison_with_a_missing_value_is_false(source: str) -> None:
    assert evaluate(source, shipment()) is False


@pytest.mark.parametrize(
    "source",
    [
        "data.estimated_delivery - data.promised_delivery == null",
        "data.order_value.amount + 1 == null",
        "data.order_value.amount * 2 - 1 == null",
        "-data.order_value.amount == null",
        "abs(data.order_value.amount) == null",
        "lower(data.exception_code) == null",
        "len(data.exception_code) == null",
        "data.estimated_delivery + 1d == null",
    ],
)
def test_arithmetic_with_a_missing_value_is_missing(source: str) -> None:
    assert evaluate(source, shipment()) is True


@pytest.mark.parametrize(
    "source", ["hours(data.order_value.amount) == null", "days(data.order_value.amount) > 1d"]
)
def test_unit_functions_of_a_missing_value_are_missing(source: str) -> None:
    assert evaluate(source, shipment()) is source.endswith("null")


def test_present_optional_values_compute_normally() -> None:
    full = shipment(
        estimated_delivery=NOW + timedelta(hours=30),
        order_value={"amount": 1200, "currency": "EUR"},
        exception_code="damaged_box",
    )
    assert evaluate("data.estimated_delivery - data.promised_delivery >= 24h", full) is True
    assert evaluate("data.order_value.amount + 1 == 1201", full) is True
    assert evaluate('"box" in data.exception_code and len(data.exception_code) == 11', full) is True
    assert evaluate("-data.order_value.amount < 0", full) is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("data.amount / 0 == null", True),
        ("data.amount / 0 > 0", False),
        ("data.amount / 0 < 0", False),
        ("data.amount / 0 >= 0 or data.amount / 0 <= 0", False),
        ("not (data.amount / 0 > 0)", True),
        ("data.amount / (data.attempt - 2) + 1 == null", True),  # attempt is 2
        ("(data.amount / 0) * 0 == null", True),
        ("1d / 0 == null and 1d / 0s == null", True),
        ("data.amount / 2 == 1450", True),
    ],
)
def test_division_by_zero_is_missing(source: str, expected: bool) -> None:
    assert evaluate(source, failed()) is expected


# --- static checks: enum literals, unknown names, columns --------------------------------------


def test_enum_literal_that_can_never_match_is_refused() -> None:
    exc = error('data.status == "deliverd"', "shipment.updated")
    assert "'deliverd' can never match" in exc.message
    assert "(did you mean 'delivered'?)" in exc.message
    assert "label_created" in exc.message and "returned" in exc.message
    assert (exc.col, exc.width) == (15, len('"deliverd"'))


def test_enum_literal_checks_cover_not_equal_and_lists() -> None:
    assert "'gone' can never match" in error('data.status != "gone"', "shipment.updated").message
    exc = error('data.status in ["delivered", "lost"]', "shipment.updated")
    assert "'lost' can never match" in exc.message
    assert "'gold' can never match" in error('customer.tier == "gold"').message
    assert "did you mean 'premium'" in error('customer.tier == "premum"').message
    assert (
        compiled('data.status in ["delivered", "returned"]', "shipment.updated").ty.kind == "bool"
    )


@pytest.mark.parametrize(
    ("source", "target", "words"),
    [
        ("data.amunt > 5", "data.amunt", "(did you mean 'amount'?)"),
        ('count("payment.failed", 7d) > 1 and data.amunt > 5', "data.amunt", "did you mean"),
        ("data.amount > 60% and data.nope", "data.nope", "not a field of data"),
        ("24h > 1h and 7d > 1d and foo > 1", "foo", "unknown name 'foo'"),
        ("30m + 2w > 1d and dta.amount > 1", "dta", "(did you mean 'data'?)"),
        ("7d > 1h and cont(1) > 0", "cont", "unknown function 'cont' (did you mean 'count'?)"),
        ("1.5h > 90s and 12.5% < 1 and data.attemp > 1", "data.attemp", "did you mean 'attempt'"),
        ("event.occured_at < now", "event.occured_at", "did you mean 'occurred_at'"),
        ("customer.teir == 'premium'", "customer.teir", "did you mean 'tier'"),
        ("data.amount > 5\n and data.nopes > 1", "data.nopes", "'nopes' is not a field"),
        ("1d > 1h and\n2d > 1h and\n  bogus(1) > 0", "bogus", "unknown function 'bogus'"),
    ],
)
def test_unknown_field_name_or_function_points_at_it(source: str, target: str, words: str) -> None:
    exc = error(source)
    assert words in exc.message
    flat = " ".join(source.split("\n"))
    assert (exc.col, exc.width) == (flat.index(target), len(target))
    caret_line = exc.excerpt(source).splitlines()[1]
    assert caret_line == "    " + " " * flat.index(target) + "^" * len(target)


def test_an_error_spanning_a_duration_covers_its_original_text() -> None:
    exc = error("data.amount > 7d")
    assert "cannot order a number against a duration" in exc.message
    assert "24h" in exc.message  # the hint: give the number a unit
    assert (exc.col, exc.width) == (0, len("data.amount > 7d"))
    exc = error("10% < 1 and data.amount + 24h > 1")
    assert (exc.col, exc.width) == (12, len("data.amount + 24h"))


def test_errors_inside_window_arguments_point_at_the_argument() -> None:
    source = 'count("payment.failed", 7d, where=data.nope > 1) > 0'
    exc = error(source)
    assert "about payment.failed events" in exc.message and "'nope'" in exc.message
    assert (exc.col, exc.width) == (source.index("data.nope"), len("data.nope"))
    assert "unknown event type 'payment.faild'" in error('count("payment.faild", 7d) > 0').message
    assert "no rule has id 'usage-decine'" in error('signaled("usage-decine", 7d)').message
    assert "literal duration" in error('count("payment.failed", data.amount) > 0').message
    assert "longer than zero" in error('count("payment.failed", 0s) > 0').message
    assert "n must be a whole number" in error("previous(data.amount, 0).count > 0").message
    assert "has no argument 'whre'" in error('count("payment.failed", 7d, whre=true) > 0').message


def test_column_after_non_ascii_text_counts_characters() -> None:
    source = 'data.decline_code == "refusée" and data.nope == 1'
    exc = error(source)
    assert exc.col == source.index("data.nope")


# --- syntax hints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "hint", "col"),
    [
        ("data.amount > 5 && data.attempt > 1", "write 'and' / 'or' instead of '&&' / '||'", 17),
        ("7d > 1h && data.amount > 1", "write 'and' / 'or' instead of '&&' / '||'", 9),
        ("data.amount > 0 || true", "write 'and' / 'or' instead of '&&' / '||'", 17),
        ("data.amount = 5", "compare with '==', not '='", None),
        ('data.currency = "USD"', "compare with '==', not '='", None),
    ],
)
def test_syntax_errors_carry_a_hint(source: str, hint: str, col: int | None) -> None:
    exc = error(source)
    assert exc.message.startswith("not a valid expression (")
    assert exc.message.endswith(hint)
    if col is not None:
        assert exc.col == col  # the second '&' / '|', where Python's parser stops


def test_a_syntax_error_without_a_known_mistake_has_no_hint() -> None:
    exc = error("data.amount > ")
    assert "&&" not in exc.message and "'=='" not in exc.message


# --- the whitelist ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("data.__class__", "'__class__' is not a field"),
        ("data.__class__.__base__", "'__class__' is not a field"),
        ("().__class__", "is a list"),
        ("(1).__class__", "is a number"),
        ("''.join", "is text"),
        ("__import__('os')", "names starting with '__' are reserved"),
        ("__builtins__", "names starting with '__' are reserved"),
        ("ctx", "unknown name 'ctx'"),
        ("K0", "unknown name 'K0'"),
        ("_get(data, 'amount')", "unknown function '_get'"),
        ("print(1)", "unknown function 'print'"),
        ("getattr(data, 'amount')", "unknown function 'getattr'"),
        ("lambda: 1", "is not allowed"),
        ("(lambda x: x)(1)", "only the listed functions"),
        ("[x for x in [1, 2]]", "is not allowed"),
        ("{x for x in [1]}", "is not allowed"),
        ("{x: 1 for x in [1]}", "is not allowed"),
        ("any(x for x in [1])", "unknown function 'any'"),
        ("(x for x in [1])", "is not allowed"),
        ("data[0]", "is not allowed"),
        ('data.currency[0] == "U"', "is not allowed"),
        ("import os", "not a valid expression"),
        ("(x := 1)", "is not allowed"),
        ("f'{data.amount}' == '1'", "is not allowed"),
        ("{}", "is not allowed"),
        ("{'a': 1}", "is not allowed"),
        ("...", "not a supported literal"),
        ("b'x' == b'x'", "not a supported literal"),
        ("1j > 0", "not a supported literal"),
        ("data.amount is None", "use '==' and '!=' instead of 'is'"),
        ("data.amount ** 2 > 1", "only + - * / are supported"),
        ("data.amount // 2 > 1", "only + - * / are supported"),
        ("data.amount % 3 > 1", "'%' is not supported"),
        ("data.amount | 1 > 1", "only + - * / are supported"),
        ("~data.amount > 1", "cannot negate"),
        ("await data", "is not allowed"),
        ("yield 1", "is not allowed"),
        ("count(**{'type': 'payment.failed'})", "has no argument"),
        ("data.amount if data else 1", "must be true or false"),
        ("data.amount and true", "must be true or false"),
        ('data.amount == "x"', "never equal"),
        ("data.amount < 'x'", "cannot order a number against text"),
        ("now + now > now", "cannot compute"),
        ("1 in data.amount", "'in' needs a list or text"),
        ("[1, 'a']", "one kind"),
    ],
)
def test_forbidden_constructs_are_refused_with_an_expr_error(source: str, words: str) -> None:
    exc = error(source)
    assert words in exc.message
    assert exc.col is None or 0 <= exc.col < len(source)


@pytest.mark.parametrize("source", ["[*data.currency]", "hours(*[1]) > 1h", "[1, *[2]]"])
def test_starred_unpacking_is_refused_with_an_expr_error(source: str) -> None:
    assert "is not allowed" in error(source).message


@pytest.mark.parametrize(
    "source",
    [
        "__percent__(data) > 1",
        "__duration__(data.amount) > 1h",
        "__duration__() > 1h",
        'count("payment.failed", __duration__(data)) > 0',
    ],
)
def test_internal_sugar_names_are_refused_with_an_expr_error(source: str) -> None:
    error(source)


@pytest.mark.parametrize("source", ["1000000000d > 1d", "99999999999w > 1d"])
def test_a_huge_duration_is_refused_with_an_expr_error(source: str) -> None:
    assert "duration" in error(source).message


def test_round_digits_must_be_a_whole_number() -> None:
    with pytest.raises((ExprError, TypeError)) as info:
        evaluate("round(data.amount, data.currency) > 1", failed())
    assert isinstance(info.value, ExprError)


def test_a_seven_digit_duration_in_a_where_filter_compiles() -> None:
    source = (
        'count("usage.reported", 30d, where=data.period_end - data.period_start >= 1000000s) > 0'
    )
    assert compiled(source, "usage.reported").ty.kind == "bool"


# --- property: nothing but ExprError escapes check() ------------------------------------------

TOKENS = [
    "data", "event", "customer", "now", "ctx", ".", "amount", "attempt", "currency", "decline_code",
    "occurred_at", "tier", "consent", "sms", "marketing", "count", "mean", "(", ")", "[", "]", "{",
    "}", ",", ":", "+", "-", "*", "/", "%", "**", "//", "<", "<=", ">", ">=", "==", "!=", "=",
    "&&", "||", "!", "and", "or", "not", "in", "is", "if", "else", "lambda", "for", "x", "1", "0",
    "-3", "2.5", "1e3", "7d", "24h", "0s", "90m", "2w", "60%", "1.5h", "'x'", '"USD"', "'é'",
    '"payment.failed"', '"usage.reported"', '"usage-decline"', "true", "false", "null", "None",
    "True", "exists", "sum", "avg", "min", "max", "latest", "previous", "signaled", "signals",
    "hours", "days", "minutes", "abs", "round", "len", "lower", "upper", "where=", "by=",
    "within=", "__class__", "\n", " ", "#", "\\", "'", '"', "f'", "b'", ":=",
]  # fmt: skip


def _only_expr_errors(source: str, trigger: str) -> None:
    try:
        check(source, scope(trigger), [])
    except ExprError as exc:
        assert exc.message
        assert exc.col is None or 0 <= exc.col <= len(source)


TRIGGERS = st.sampled_from(
    ["payment.failed", "shipment.updated", "usage.reported", "customer.updated"]
)


@PROPERTY
@given(st.text(max_size=60), TRIGGERS)
def test_random_text_only_ever_raises_expr_error(source: str, trigger: str) -> None:
    _only_expr_errors(source, trigger)


@PROPERTY
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=16), TRIGGERS)
def test_token_soup_only_ever_raises_expr_error(tokens: list[str], trigger: str) -> None:
    _only_expr_errors(" ".join(tokens), trigger)


_atoms = st.sampled_from(
    [
        "data", "event", "customer", "now", "data.amount", "data.attempt", "data.currency",
        "event.occurred_at", "customer.tier", "customer.consent.sms", "customer.locale", "1", "0",
        "2.5", "7d", "24h", "60%", "'x'", '"payment.failed"', '"usage-decline"', "true", "null",
        "[]", "[1, 2]", "['a']",
    ]
)  # fmt: skip
_functions = st.sampled_from(
    [
        "count", "exists", "sum", "avg", "min", "max", "latest", "previous", "signaled", "signals",
        "hours", "days", "minutes", "abs", "round", "len", "lower", "upper", "nope",
    ]
)  # fmt: skip


def _grammar(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    call = st.builds(
        lambda f, args, kws: f"{f}({', '.join(args + [f'{k}={v}' for k, v in kws])})",
        _functions,
        st.lists(inner, max_size=4),
        st.lists(st.tuples(st.sampled_from(["where", "by", "within", "n"]), inner), max_size=2),
    )
    ops = st.sampled_from(
        ["+", "-", "*", "/", "<", "<=", ">", ">=", "==", "!=", "and", "or", "in", "not in", "%"]
    )
    binary = st.builds(lambda a, op, b: f"({a} {op} {b})", inner, ops, inner)
    unary = st.builds(lambda op, a: f"{op}{a}", st.sampled_from(["not ", "-", "+"]), inner)
    cond = st.builds(lambda a, b, c: f"({a} if {b} else {c})", inner, inner, inner)
    attr = st.builds(
        lambda a, n: f"{a}.{n}", inner, st.sampled_from(["count", "mean", "amount", "sms", "x"])
    )
    listed = st.builds(lambda xs: "[" + ", ".join(xs) + "]", st.lists(inner, max_size=3))
    return call | binary | unary | cond | attr | listed


@PROPERTY
@given(st.recursive(_atoms, _grammar, max_leaves=10), TRIGGERS)
def test_grammatical_expressions_only_ever_raise_expr_error(source: str, trigger: str) -> None:
    _only_expr_errors(source, trigger)


@PROPERTY
@given(
    st.lists(st.sampled_from(["7d", "24h", "1.5h", "60%", "12.5%", "30m", "2w"]), max_size=4),
    st.sampled_from(["data.nope", "data.amunt", "nope", "bogus(1)"]),
)
def test_the_caret_survives_any_number_of_sugar_literals(sugar: list[str], wrong: str) -> None:
    prefix = "".join(f"{s} == {s} and " for s in sugar)
    source = f"{prefix}{wrong} > 1"
    exc = error(source)
    target = wrong.split("(")[0]
    assert exc.col == len(prefix)
    assert exc.width == len(target)


# --- property: arithmetic and logic agree with Python -----------------------------------------

Missing = None


def _num(a: Any, op: str, b: Any) -> Any:
    if a is None or b is None:
        return None
    if op == "/":
        return None if b == 0 else a / b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _cmp(a: Any, op: str, b: Any) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if a is None or b is None:
        return False
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


Node = tuple[str, Any, bool]  # (source, value under the documented semantics, missing seen)

_leaf = st.integers(0, 20).map(lambda n: (str(n), n, False))


def _numbers(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def binary(a: Node, op: str, b: Node) -> Node:
        value = _num(a[1], op, b[1])
        return f"({a[0]} {op} {b[0]})", value, a[2] or b[2] or value is None

    def negate(a: Node) -> Node:
        return f"(-{a[0]})", None if a[1] is None else -a[1], a[2]

    return st.builds(binary, inner, st.sampled_from(["+", "-", "*", "/"]), inner) | st.builds(
        negate, inner
    )


_numeric = st.recursive(_leaf, _numbers, max_leaves=8)


def _compare(a: Node, op: str, b: Node) -> Node:
    return f"({a[0]} {op} {b[0]})", _cmp(a[1], op, b[1]), a[2] or b[2]


_comparison = st.builds(
    _compare, _numeric, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _numeric
)


def _logic(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def both(a: Node, op: str, b: Node) -> Node:
        value = (a[1] and b[1]) if op == "and" else (a[1] or b[1])
        return f"({a[0]} {op} {b[0]})", value, a[2] or b[2]

    def negate(a: Node) -> Node:
        return f"(not {a[0]})", not a[1], a[2]

    return st.builds(both, inner, st.sampled_from(["and", "or"]), inner) | st.builds(negate, inner)


_boolean = st.recursive(
    _comparison | st.sampled_from([("true", True, False), ("false", False, False)]),
    _logic,
    max_leaves=6,
)


def _run(source: str) -> Any:
    return evaluate(source, failed())


@PROPERTY
@given(_numeric)
def test_numeric_expressions_agree_with_python(node: Node) -> None:
    source, expected, missing = node
    got = _run(source)
    assert got == expected and type(got) is type(expected)
    if not missing:
        assert got == eval(source)  # noqa: S307 - integer literals and + - * / only


@PROPERTY
@given(_boolean)
def test_conditions_agree_with_python(node: Node) -> None:
    source, expected, missing = node
    got = _run(source)
    assert got is expected
    if not missing:
        python = source.replace("true", "True").replace("false", "False")
        assert got is eval(python)  # noqa: S307 - literals, comparisons, and/or/not only


def test_the_documented_semantics_differ_from_python_only_on_division_by_zero() -> None:
    assert _run("(1 / 0) > 0") is False and _run("(1 / 0) < 0") is False
    assert _run("((1 / 0) + 1) == null") is True
    with pytest.raises(ZeroDivisionError):
        eval("(1 / 0) > 0")  # noqa: S307
    assert json.dumps(_run("((2 - 2) / (3 - 3)) * 5")) == "null"
