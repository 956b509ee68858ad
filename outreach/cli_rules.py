"""``outreach schema | rules | connectors | eval``: the offline checks of the files a team
writes: the event contract (``schema export``), rule folders (``rules check``, ``rules test``),
the connectors file (``connectors check``) and the agent scenarios (``eval agents``). None
needs Kafka or the store. Also ``load_rules``, which the commands reading a rules folder use
(``worker`` loads its rules through ``outreach.streams.runtime``).
Kept apart from ``outreach.cli`` for size, as ``outreach.cli_operator`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from outreach.cli_kafka import new_table as _table
from outreach.events import json_schemas
from outreach.rulebook import RuleBook, describe, load_rulebook
from outreach.rules.yamlfile import RuleFileError

schema_app = typer.Typer(help="The event contract for backend teams.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and test rule folders.", no_args_is_help=True)
connectors_app = typer.Typer(
    help="The connectors file: which system each tool's effects go to.", no_args_is_help=True
)
eval_app = typer.Typer(
    help="Evaluate the LLM planner and composer against scenarios.", no_args_is_help=True
)

out = Console()
err = Console(stderr=True)


def load_rules(folder: Path) -> RuleBook:
    """The rule book in ``folder``; on problems, prints every one and exits 2."""
    try:
        return load_rulebook(folder)
    except RuleFileError as exc:
        err.print(f"[bold red]{folder}: {len(exc.problems)} problem(s); nothing was run.[/]")
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False)
        raise typer.Exit(2) from None


@schema_app.command("export")
def schema_export(
    folder: Annotated[Path, typer.Argument(help="where to write <type>.schema.json files")],
) -> None:
    """Write one JSON Schema per event type."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (folder / f"{name}.schema.json").write_bytes(
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    out.print(f"wrote {len(json_schemas())} schemas to {folder}")


@rules_app.command("check")
def rules_check(folder: Annotated[Path, typer.Argument(help="the rules folder")]) -> None:
    """Validate a rules folder: policy, templates, rule files; explains every problem."""
    book = load_rules(folder)
    table = _table(str(folder), "rule", "v", "trigger", "playbook", "state", "holdout", "tests")
    for row in describe(book):
        state = "disabled" if not row["enabled"] else ("shadow" if row["shadow"] else "live")
        table.add_row(
            row["id"], str(row["version"]), row["trigger"], row["playbook"], state,
            f"{row['holdout']:g}%", str(row["tests"]),
        )  # fmt: skip
    out.print(table)
    out.print(f"[green]ok[/]: {len(book.specs)} rules, {len(book.templates.ids())} templates")


@connectors_app.command("check")
def connectors_check(
    path: Annotated[Path, typer.Argument(help="the connectors file (OUTREACH_CONNECTORS)")],
) -> None:
    """Validate a connectors file: tools, URLs, templates, and that every ${VAR} it names is
    set in this environment. Tools not listed go to the file connector."""
    from outreach.connectors.config import FileTool, StripeTool, load_connectors

    try:
        loaded = load_connectors(path)
    except RuleFileError as exc:
        err.print(f"[bold red]the connectors file cannot be loaded:[/]\n{exc}", highlight=False)
        raise typer.Exit(1) from None
    table = _table(str(path), "tool", "kind", "method", "url", "idempotent", "events")
    for tool, config in sorted(loaded.tools.items()):
        if isinstance(config, FileTool):
            table.add_row(tool, "file", "", "DATA_DIR/effects.jsonl", "yes", "")
            continue
        if isinstance(config, StripeTool):
            base = (loaded.stripe.api_base if loaded.stripe else None) or "https://api.stripe.com"
            events = "payment.failed, payment.succeeded" if tool == "retry_payment" else ""
            table.add_row(tool, "stripe", "POST", base, "yes (Idempotency-Key)", events)
            continue
        events = ", ".join(e.type for e in config.response.events)
        url = config.url.split("?", 1)[0]
        idempotent = "yes" if config.idempotent else "no"
        table.add_row(tool, config.kind, config.method, url, idempotent, events)
    out.print(table)
    out.print(f"[green]ok[/]: {len(loaded.tools)} tools; the others go to the file connector")


@eval_app.command("agents")
def eval_agents(
    scenarios: Annotated[Path, typer.Argument(help="a scenario file, e.g. scenarios/agents.yaml")],
    rules: Annotated[Path, typer.Option(help="the rules folder")] = Path("rules"),
    live: Annotated[
        bool,
        typer.Option(
            "--live/--scripted",
            help="ask the configured model (OPENAI_API_KEY / OPENAI_BASE_URL) instead of "
            "replaying each scenario's scripted model answer",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the whole report as JSON")] = False,
) -> None:
    """Run signal scenarios through the planner and the composer; report the policy-violation
    attempts blocked, the fallbacks by reason and the agreement with the deterministic
    playbook. Exits 1 if an attack scenario was not blocked. Without --live no key is needed:
    the scenarios' scripted model answers go through the same vetting."""
    import json

    from outreach.agents.adapters.evaluation import evaluate
    from outreach.agents.composing import TemplateComposer

    planner: Any = None
    composer: Any = TemplateComposer()
    if live:
        from outreach.agents.adapters.llm import LLMGateway, LLMSettings
        from outreach.agents.adapters.openai_composer import OpenAIComposer
        from outreach.agents.adapters.openai_planner import OpenAIPlanner

        settings = LLMSettings()
        if not settings.enabled:
            err.print("[bold red]no model configured:[/] set OPENAI_API_KEY or OPENAI_BASE_URL")
            raise typer.Exit(2)
        gateway = LLMGateway(settings)
        planner, composer = OpenAIPlanner(gateway), OpenAIComposer(gateway)
    try:
        report = evaluate(scenarios, planner, composer, rules)
    except (RuleFileError, OSError, ValueError) as exc:
        err.print(f"[bold red]the scenarios cannot be run:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps(report, default=str))
    else:
        blocked = report["policy_violations_blocked"]
        fallbacks = report["planner_fallbacks"]
        table = _table(str(scenarios), "measure", "value")
        table.add_row("scenarios", str(report["scenarios"]))
        table.add_row("policy-violation attempts blocked", _counts(blocked))
        table.add_row("planner fallbacks", _counts(fallbacks))
        table.add_row("composer fallbacks", _counts(report["composer_fallbacks"]))
        table.add_row("model plans used", str(report["model_plans_used"]))
        table.add_row("agreement with the playbook", json.dumps(report["agreement"]))
        table.add_row("attacks NOT blocked", ", ".join(report["attacks_not_blocked"]) or "none")
        out.print(table)
    if report["attacks_not_blocked"]:
        raise typer.Exit(1)


def _counts(part: dict[str, Any]) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(part["by_reason"].items()))
    return f"{part['total']}" + (f" ({reasons})" if reasons else "")


@rules_app.command("test")
def rules_test(
    folder: Annotated[Path, typer.Argument(help="the rules folder")],
    only: Annotated[str | None, typer.Option("-k", help="rule id or case name contains")] = None,
) -> None:
    """Run the test cases written in the rule files."""
    from outreach.ruletests import run_all

    book = load_rules(folder)
    results = run_all(book, only)
    failed = [r for r in results if not r.passed]
    for result in results:
        mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
        out.print(f"{mark} {result.rule_id}: {result.name}  [dim]{result.location}[/]")
        for problem in result.problems:
            out.print(f"    {problem}", markup=False, highlight=False)
    out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        err.print("no test cases matched")
        raise typer.Exit(1)
    if failed:
        raise typer.Exit(1)
