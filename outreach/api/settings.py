"""``ApiSettings``: where the HTTP app listens and the secrets its webhooks are checked with.

Must not import: faust, the decision core.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from outreach.outbound.config import PublicEndpointSettings


class ApiSettings(PublicEndpointSettings):
    """The ``outreach api`` process (``OUTREACH_*`` variables; CLI options override).

    A webhook whose secret is not set answers 503 (it cannot tell real calls from forged
    ones), so a half-configured deployment fails loudly instead of trusting anyone."""

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="port to listen on")
    rules: Path = Field(default=Path("rules"), description="rules folder (brand, SMS replies)")
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
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, description="the signing secret (whsec_...) of the Stripe webhook endpoint"
    )
    stripe_webhook_tolerance: int = Field(
        default=300, gt=0, description="seconds a Stripe signature's timestamp may be old"
    )
