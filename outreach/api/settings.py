"""``ApiSettings``: where the HTTP app listens and the secrets its webhooks are checked with.

Must not import: faust, the decision core.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """The ``outreach api`` process (``OUTREACH_*`` variables; CLI options override).

    A webhook whose secret is not set answers 503 (it cannot tell real calls from forged
    ones), so a half-configured deployment fails loudly instead of trusting anyone."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="port to listen on")
    rules: Path = Field(default=Path("rules"), description="rules folder (brand, SMS replies)")
    public_url: str | None = Field(
        default=None,
        description="the base URL the providers call (https://hooks.example.com); behind a "
        "proxy, Twilio signatures are checked against it, not the URL the app sees",
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="the Twilio account auth token that signs its webhooks"
    )
    sendgrid_webhook_public_key: str | None = Field(
        default=None,
        description="the event webhook verification key SendGrid shows (base64, or PEM)",
    )
    sendgrid_max_skew: float = Field(
        default=300.0,
        gt=0,
        description="seconds a SendGrid signature timestamp may be off now (replays)",
    )
    unsubscribe_secret: SecretStr | None = Field(
        default=None, description="the secret unsubscribe links are signed with"
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip().rstrip("/")
        if not url.startswith(("https://", "http://")) or "?" in url or "#" in url:
            raise ValueError(
                f"{url!r} is not a base URL: give the scheme and host the providers call, "
                "with an optional path prefix, e.g. https://hooks.example.com"
            )
        return url
