"""``outreach keys | audit``: the administrator's housekeeping of the store: the operator
API's keys (created, listed, revoked) and the audit trail's retention (``audit prune``)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outreach.cli_operator import DatabaseOption, open_operator
from outreach.store.operator import SCOPES, iso

keys_app = typer.Typer(help="API keys of the operator API: create, list, revoke.",
                       no_args_is_help=True)  # fmt: skip

out = Console()
err = Console(stderr=True)


# -- keys -----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses it (shown in records)")],
    scope: Annotated[str, typer.Option(help="ingest, operator or admin")],
    database_url: DatabaseOption = None,
) -> None:
    """Create an API key and print it once (only its hash is kept)."""
    if scope not in SCOPES:
        err.print(f"[bold red]unknown scope {scope!r}:[/] use one of {', '.join(SCOPES)}")
        raise typer.Exit(2)
    operator = open_operator(database_url)
    try:
        key, token = operator.create_key(name, scope)
    finally:
        operator.store.close()
    err.print(f"key {key.key_id} ({key.scope}) for {escape(name)}; shown once, keep it secret:")
    out.out(token)


@keys_app.command("list")
def keys_list(database_url: DatabaseOption = None) -> None:
    """Every key (never the secrets)."""
    operator = open_operator(database_url)
    try:
        found = operator.keys()
    finally:
        operator.store.close()
    table = Table(title="API keys")
    for header in ("key", "name", "scope", "created", "revoked"):
        table.add_column(header)
    for k in found:
        revoked = iso(k.revoked_at) if k.revoked_at else ""
        table.add_row(k.key_id, k.name, k.scope, iso(k.created_at), revoked)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument()], database_url: DatabaseOption = None
) -> None:
    """Revoke a key at once."""
    operator = open_operator(database_url)
    try:
        done = operator.revoke_key(key_id)
    finally:
        operator.store.close()
    if not done:
        err.print(f"[bold red]no live key {escape(key_id)}[/]")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


# -- the audit trail ---------------------------------------------------------------------


audit_app = typer.Typer(help="The audit trail: prune old entries.", no_args_is_help=True)


@audit_app.command("prune")
def audit_prune(
    older_than: Annotated[
        str, typer.Option(help="delete entries recorded longer ago than this (e.g. 365d)")
    ],
    database_url: DatabaseOption = None,
) -> None:
    """Delete audit entries (and decided approvals) older than --older-than, by event time.
    Customers' states, the outbox and the tallies are kept. Running schedulers do this every
    hour when $OUTREACH_AUDIT_RETENTION is set."""
    from outreach.rules.durations import parse_duration

    try:
        keep = parse_duration(older_than)
    except ValueError as exc:
        err.print(f"[bold red]--older-than:[/] {exc}")
        raise typer.Exit(2) from None
    before = time.time() - keep.total_seconds()
    operator = open_operator(database_url)
    try:
        deleted = operator.prune_audit(before)
    finally:
        operator.store.close()
    out.print(f"deleted {deleted} audit entries recorded before {iso(before)}")
