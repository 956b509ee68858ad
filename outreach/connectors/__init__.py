"""Connectors to the operator's systems, chosen per tool by configuration.

``build_connector`` reads ``OUTREACH_CONNECTORS`` (the connectors file, ``config``) and returns
a ``ToolRouter``: each listed tool goes to its connector (``http``: ``HttpConnector``;
``helpdesk``: the same with a Zendesk-compatible ticket body; ``stripe``: ``StripeBilling``,
one for the account's billing tools), every other tool to the file
connector, the embedded default. Switching the demo from fakes to real systems is this one
variable.

Must not import: faust, aiokafka, sqlalchemy, fastapi, openai.
"""

from __future__ import annotations

from pathlib import Path

from outreach.agents.connectors import Connector, Effect, EffectResult, FileConnector
from outreach.connectors.billing import StripeBilling
from outreach.connectors.config import (
    ConnectorsSettings,
    FileTool,
    Loaded,
    StripeTool,
    load_connectors,
)
from outreach.connectors.http import CircuitBreaker, HttpConnector
from outreach.errors import ConnectorPaused


class ToolRouter:
    """The ``Connector`` port over one connector per tool and a default for the rest."""

    def __init__(self, routes: dict[str, Connector], default: Connector) -> None:
        self.routes = routes
        self.default = default

    async def perform(self, effect: Effect) -> EffectResult:
        """Perform ``effect`` through its tool's connector."""
        return await self.routes.get(effect.tool, self.default).perform(effect)

    async def aclose(self) -> None:
        """Release the HTTP connections."""
        for connector in {id(c): c for c in self.routes.values()}.values():
            if isinstance(connector, HttpConnector | StripeBilling):
                await connector.aclose()


def build_connector(
    data_dir: Path,
    settings: ConnectorsSettings | None = None,
    public_url: str | None = None,
) -> ToolRouter:
    """The connectors the configuration asks for (``RuleFileError`` for a bad file)."""
    settings = settings or ConnectorsSettings()
    default = FileConnector(data_dir / "effects.jsonl")
    if settings.connectors is None:
        return ToolRouter({}, default)
    loaded = load_connectors(settings.connectors)
    return router_for(loaded, default, settings, public_url)


def router_for(
    loaded: Loaded,
    default: Connector,
    settings: ConnectorsSettings | None = None,
    public_url: str | None = None,
) -> ToolRouter:
    """A router over an already loaded connectors file."""
    secret = settings.connector_secret if settings is not None else None
    key = secret.get_secret_value() if secret is not None else None
    routes: dict[str, Connector] = {}
    billing = StripeBilling(loaded.stripe) if loaded.stripe is not None else None
    for tool, config in loaded.tools.items():
        if isinstance(config, FileTool):
            routes[tool] = default
        elif isinstance(config, StripeTool):
            assert billing is not None  # load_connectors refuses kind stripe without it
            routes[tool] = billing  # one account, one breaker for its four tools
        else:
            routes[tool] = HttpConnector(tool, config, secret=key, public_url=public_url)
    return ToolRouter(routes, default)


__all__ = [
    "CircuitBreaker",
    "ConnectorPaused",
    "ConnectorsSettings",
    "HttpConnector",
    "StripeBilling",
    "ToolRouter",
    "build_connector",
    "load_connectors",
    "router_for",
]
