"""Which channel sends SMS and which sends email, checked once at start-up.

Owns ``OutboundSettings`` (``OUTREACH_SMS_CHANNEL``, ``OUTREACH_EMAIL_CHANNEL``,
``OUTREACH_PUBLIC_URL``, ``OUTREACH_UNSUBSCRIBE_SECRET``), ``ChannelRouter`` (the ``Channel``
port over one SMS and one email channel), ``build_channel`` (every missing variable named in
one ``ChannelConfigError``), and what the provider channels share: ``ChannelConfigError`` and
``retry_after_seconds``.

The provider modules (``outreach.outbound.twilio``, ``outreach.outbound.sendgrid``) import this
one; it imports them only inside ``build_channel`` and only when they are configured, so the
file channels start without the provider SDKs.

Must not import (at module level): twilio, sendgrid, faust, aiokafka, sqlalchemy, fastapi,
openai.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outreach.decisions import Delivery
from outreach.errors import OutreachError, PermanentDeliveryError
from outreach.outbound.channels import Channel, FileChannel, SendResult
from outreach.outbound.unsubscribe import UnsubscribeLinks

if TYPE_CHECKING:
    from outreach.outbound.sendgrid import SendGridSettings
    from outreach.outbound.twilio import TwilioSettings

TWILIO_STATUS_PATH = "/webhooks/twilio/status"  # where our API takes Twilio status callbacks


class ChannelConfigError(OutreachError):
    """A channel that cannot start as configured; the message names the variables to set."""


class PublicEndpointSettings(BaseSettings):
    """Where providers and recipients reach our API, and the secret its unsubscribe links are
    signed with: the same two variables for the workers (which make the links) and for
    ``outreach api`` (which checks them and Twilio's signatures)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_")

    public_url: str | None = Field(
        default=None,
        description="the base URL of our API (https://hooks.example.com): unsubscribe links "
        "and the default Twilio status callback are made from it; behind a proxy, Twilio "
        "signatures are checked against it, not the URL the app sees",
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
                f"{url!r} is not a base URL: give the scheme and host the providers and "
                "recipients reach, with an optional path prefix, e.g. https://hooks.example.com"
            )
        return url


class OutboundSettings(PublicEndpointSettings):
    """Which channels the dispatcher sends through (``OUTREACH_*`` variables)."""

    sms_channel: Literal["file", "twilio"] = Field(
        default="file", description="file: append to messages.jsonl; twilio: send for real"
    )
    email_channel: Literal["file", "sendgrid"] = Field(
        default="file", description="file: append to messages.jsonl; sendgrid: send for real"
    )


class ChannelRouter:
    """The ``Channel`` port over one SMS channel and one email channel."""

    def __init__(self, sms: Channel, email: Channel) -> None:
        self.sms = sms
        self.email = email

    def channel_for(self, delivery: Delivery) -> Channel:
        """The channel that sends ``delivery``; ``PermanentDeliveryError`` for an unknown one."""
        if delivery.channel == "sms":
            return self.sms
        if delivery.channel == "email":
            return self.email
        raise PermanentDeliveryError(
            f"message {delivery.message_id}: no channel sends {delivery.channel!r} "
            "(expected 'sms' or 'email')",
            code="channel",
        )

    async def send(self, delivery: Delivery, key: str, retry: bool = False) -> SendResult:
        """Hand ``delivery`` to the channel of its kind."""
        return await self.channel_for(delivery).send(delivery, key, retry=retry)

    async def close(self) -> None:
        """Release the channels' connections (each channel at most once)."""
        closed: list[Channel] = []
        for channel in (self.sms, self.email):
            if any(channel is seen for seen in closed):
                continue
            closed.append(channel)
            close: Callable[[], object] | None = getattr(channel, "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result


ACCOUNT_RETRY_AFTER = 300.0  # seconds between tries while a provider refuses our credentials


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number or an HTTP date), or ``None``."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _twilio_settings(outbound: OutboundSettings, twilio: TwilioSettings) -> TwilioSettings:
    """``twilio`` with the status callback defaulting to our API's webhook."""
    if twilio.status_callback_url or not outbound.public_url:
        return twilio
    return twilio.model_copy(
        update={"status_callback_url": outbound.public_url + TWILIO_STATUS_PATH}
    )


def _unsubscribe_links(outbound: OutboundSettings) -> UnsubscribeLinks | None:
    secret = outbound.unsubscribe_secret.get_secret_value() if outbound.unsubscribe_secret else ""
    if not secret or not outbound.public_url:
        return None
    return UnsubscribeLinks(secret, outbound.public_url)


def _unsubscribe_problems(outbound: OutboundSettings) -> list[str]:
    why = "(marketing email must carry a one-click unsubscribe link)"
    problems = []
    if not outbound.unsubscribe_secret or not outbound.unsubscribe_secret.get_secret_value():
        problems.append(f"OUTREACH_UNSUBSCRIBE_SECRET is not set {why}")
    if not outbound.public_url:
        problems.append(f"OUTREACH_PUBLIC_URL is not set {why}")
    return problems


def build_channel(
    outbound: OutboundSettings,
    twilio: TwilioSettings,
    sendgrid: SendGridSettings,
    data_dir: Path,
) -> ChannelRouter:
    """The configured channels; ``ChannelConfigError`` naming every missing variable at once."""
    problems: list[str] = []
    twilio = _twilio_settings(outbound, twilio)
    unsubscribe = _unsubscribe_links(outbound)
    if outbound.sms_channel == "twilio":
        from outreach.outbound.twilio import twilio_problems

        problems += twilio_problems(twilio)
    if outbound.email_channel == "sendgrid":
        from outreach.outbound.sendgrid import sendgrid_problems

        problems += sendgrid_problems(sendgrid) + _unsubscribe_problems(outbound)
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise ChannelConfigError(f"the outbound channels cannot start:\n{listed}")

    file_channel: FileChannel | None = None

    def shared_file() -> FileChannel:
        nonlocal file_channel
        if file_channel is None:
            file_channel = FileChannel(data_dir / "messages.jsonl")
        return file_channel

    sms: Channel
    email: Channel
    if outbound.sms_channel == "twilio":
        from outreach.outbound.twilio import TwilioSmsChannel

        sms = TwilioSmsChannel(twilio)
    else:
        sms = shared_file()
    if outbound.email_channel == "sendgrid":
        from outreach.outbound.sendgrid import SendGridEmailChannel

        email = SendGridEmailChannel(sendgrid, unsubscribe)
    else:
        email = shared_file()
    return ChannelRouter(sms, email)
