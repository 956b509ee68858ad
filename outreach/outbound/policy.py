"""The contact policy: whether, when and on which channel a planned message may go.

In order: notice dedup -> marketing priority (nothing promotional right after a service-failure
message) -> channel choice by purpose with fallback (kill switch, suppression, address, consent,
template variant, SMS segment budget) -> quiet hours in the recipient's timezone (defer to the
next allowed minute, never drop) -> marketing frequency caps (at the moment of sending).
``decide`` is pure; ``commit`` records a send in the customer's contact state.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from outreach.errors import TemplateRenderError
from outreach.eventfields import Locale, Timezone
from outreach.outbound.state import ContactState
from outreach.outbound.templates import Rendered, TemplateCatalog
from outreach.outbound.unsubscribe import MARKETING_LIST, UNSUBSCRIBE_MARKER
from outreach.rules.durations import Duration, format_duration
from outreach.rules.state import Profile

Channel = Literal["sms", "email"]
MessageStatus = Literal["sent", "deferred", "suppressed", "capped"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuietHours(_Config):
    """Local hours during which nothing is sent (the window may cross midnight)."""

    start: time
    end: time


class RollingCap(_Config):
    """At most ``count`` marketing messages in any ``window``."""

    count: int = Field(ge=0)
    window: Duration


class MarketingCaps(_Config):
    """Marketing frequency caps per customer."""

    per_local_day: int = Field(ge=0)
    rolling: RollingCap


class ChannelOrder(_Config):
    """Channels to try, in order, per purpose."""

    transactional: list[Channel] = Field(min_length=1)
    marketing: list[Channel] = Field(min_length=1)


_HELP = (
    "{brand}: alerts about your orders, payments and plan, up to 10 msgs/month. "
    "Help: {support_url} or {support_email}. Msg & data rates may apply. "
    "Reply STOP to opt out."
)


class KeywordReplies(_Config):
    """The SMS answers to STOP, START, HELP, and YES/NO to an offer ({brand}, {support_url},
    {support_email})."""

    stop: str = (
        "{brand}: you are unsubscribed and will receive no more messages. "
        "Reply START to resubscribe."
    )
    start: str = "{brand}: you are subscribed again. Reply HELP for help, STOP to opt out."
    help: str = _HELP
    # answers to YES / NO to an offer awaiting acceptance (not compliance: no reply to an
    # opted-out number); ``unavailable``: a YES the guardrails no longer allow (a person
    # follows up)
    accepted: str = "{brand}: done, your offer is applied. Reply STOP to opt out."
    declined: str = "{brand}: understood, no change to your plan. Reply STOP to opt out."
    unavailable: str = (
        "{brand}: thanks! We could not apply this offer automatically; a colleague will be in "
        "touch shortly. Reply STOP to opt out."
    )

    @field_validator("help")
    @classmethod
    def _help_says_what_ctia_asks(cls, text: str) -> str:
        missing = [
            what for what in ("{brand}", "Msg & data rates may apply", "STOP") if what not in text
        ]
        if missing:
            raise ValueError(f"the HELP answer must contain {', '.join(map(repr, missing))}")
        return text


class ContactPolicyConfig(_Config):
    """The ``contact:`` section of ``rules/policy.yaml``."""

    quiet_hours: QuietHours
    default_timezone: Timezone
    default_locale: Locale
    marketing_caps: MarketingCaps
    no_marketing_after_service_failure: Duration
    channels: ChannelOrder
    notice_dedup: Duration
    # the email list marketing mail belongs to: with SendGrid, the unsubscribe group id
    marketing_list: str = Field(default=MARKETING_LIST, min_length=1, max_length=64)
    keywords: KeywordReplies = KeywordReplies()


class Controls(Protocol):
    """Engine-wide switches set at run time (a template paused after carrier filtering)."""

    def control(self, kind: str, name: str) -> str | None:
        """Why ``name`` of ``kind`` is switched off, or ``None``."""
        ...


@dataclass
class OutboundMessage:
    """A message the agents want to send, with its identity and template data."""

    message_id: str
    signal_id: str
    rule_id: str
    template: str
    purpose: str
    context: dict[str, Any]
    notice: str
    category: str


@dataclass
class MessageDecision:
    """The policy's verdict on one message."""

    status: MessageStatus
    channel: str
    to: str | None
    reason: str
    send_at: datetime
    rendered: Rendered | None = None
    checks: list[dict[str, str]] = field(default_factory=list)
    compose: Callable[[], Composition] | None = None  # the composer, not yet asked
    composer: dict[str, Any] | None = None  # what it did (a model composer's account)

    @property
    def deliverable(self) -> bool:
        """Sent now or certain to be judged again later (deferred)."""
        return self.status in ("sent", "deferred")

    def finish(self) -> None:
        """Let the composer word a message that goes now (once; the policy may judge a
        message several times before one verdict is recorded, so it is asked only here)."""
        if self.compose is None:
            return
        hook, self.compose = self.compose, None
        if self.status == "sent" and self.rendered is not None:
            self.rendered, check, self.composer = hook()
            self.checks.append(check)


# what a composer gives back: the text that goes, the check it passed or failed, its account
Composition = tuple[Rendered, dict[str, str], dict[str, Any] | None]
ComposeHook = Callable[[OutboundMessage, Rendered], Composition]


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class ContactPolicy:
    """Applies ``ContactPolicyConfig`` with a template catalog and channel kill switches."""

    def __init__(
        self,
        config: ContactPolicyConfig,
        templates: TemplateCatalog,
        killed_channels: frozenset[str],
        brand: dict[str, Any],
        compose: ComposeHook | None = None,
    ) -> None:
        """``compose``: words a message that goes (``composing.policy_hook``); none: the
        template text as it is."""
        self.config = config
        self.templates = templates
        self.killed = killed_channels
        self.brand = brand
        self.compose = compose

    def timezone(self, profile: Profile) -> ZoneInfo:
        """The recipient's timezone, or the configured default."""
        return _zone(profile.timezone or self.config.default_timezone)

    def decide(
        self,
        msg: OutboundMessage,
        profile: Profile,
        contact: ContactState,
        now: datetime,
        controls: Controls | None = None,
        resend: bool = False,
        avoid: Mapping[str, str] | None = None,
    ) -> MessageDecision:
        """Judge ``msg`` at ``now``; changes nothing.

        ``resend``: the message went out once already and must go again (a carrier retry,
        another channel after an unusable number): dedup, priority and caps judged it then;
        consent, suppression, kill switches and quiet hours are judged again now.
        ``avoid``: channels not to use this time, each with why (a provider that failed it)."""
        checks: list[dict[str, str]] = []
        order = getattr(self.config.channels, msg.purpose)
        now_ts = now.timestamp()

        def refuse(status: MessageStatus, check: str, reason: str) -> MessageDecision:
            checks.append({"check": check, "result": "fail", "detail": reason})
            return MessageDecision(status, order[0], None, reason, now, None, checks)

        seen = contact.notices.get(msg.notice)
        window = self.config.notice_dedup.total_seconds()
        if (
            not resend
            and seen is not None
            and seen[1] != msg.message_id
            and now_ts - seen[0] < window
        ):
            return refuse("suppressed", "dedup", f"duplicate notice: already sent as {seen[1]}")
        if msg.purpose == "marketing" and not resend:
            blackout = self._after_service_failure(contact, now_ts)
            if blackout:
                return refuse("suppressed", "priority", blackout)
        channel, to, rendered, why_not = self._choose(
            msg, profile, contact, order, checks, controls, avoid or {}
        )
        if channel is None:
            return refuse("suppressed", "channel", "no channel may carry it: " + "; ".join(why_not))
        tz = self.timezone(profile)
        resume = next_allowed(now, tz, self.config.quiet_hours)
        if resume is not None:
            detail = (
                f"quiet hours in {tz.key}; deferred to {resume.astimezone(tz):%Y-%m-%d %H:%M} local"
            )
            checks.append({"check": "quiet_hours", "result": "defer", "detail": detail})
            return MessageDecision("deferred", channel, to, detail, resume, rendered, checks)
        if msg.purpose == "marketing" and not resend:
            capped = self._capped(contact, now, tz)
            if capped:
                checks.append({"check": "frequency_cap", "result": "fail", "detail": capped})
                return MessageDecision("capped", channel, to, capped, now, rendered, checks)
        compose = None
        if self.compose is not None and rendered is not None:
            compose = functools.partial(self.compose, msg, rendered)
        return MessageDecision("sent", channel, to, "sent", now, rendered, checks, compose)

    def _after_service_failure(self, contact: ContactState, now: float) -> str:
        """Why marketing must wait for a service-failure message, or an empty string."""
        window = self.config.no_marketing_after_service_failure
        last = contact.service_failure_at
        if last is not None and now - last < window.total_seconds():
            return f"no marketing within {format_duration(window)} of a service-failure message"
        if any(d.category == "service_failure" for d in contact.deferred.values()):
            return "a service-failure message is waiting to be sent; no marketing before it"
        return ""

    def _choose(
        self,
        msg: OutboundMessage,
        profile: Profile,
        contact: ContactState,
        order: list[str],
        checks: list[dict[str, str]],
        controls: Controls | None = None,
        avoid: Mapping[str, str] | None = None,
    ) -> tuple[str | None, str | None, Rendered | None, list[str]]:
        why_not: list[str] = []
        for channel in order:
            problem = (avoid or {}).get(channel) or self._channel_problem(
                channel, msg.purpose, profile, contact, msg.template
            )
            if problem is None and controls is not None:
                switched = controls.control("channel", channel)
                paused = controls.control("template", f"{channel}:{msg.template}")
                if switched is not None:
                    problem = f"kill switch ({switched})"
                elif paused is not None:
                    problem = f"template paused on {channel} ({paused})"
            rendered = None
            if problem is None:
                rendered, problem = self._render(msg, channel, profile)
            if problem is None and rendered is not None:
                checks.append(
                    {"check": "channel", "result": "pass", "detail": f"{channel} allowed"}
                )
                to = profile.phone if channel == "sms" else profile.email
                return channel, to, rendered, why_not
            why_not.append(f"{channel}: {problem}")
            checks.append({"check": "channel", "result": "fail", "detail": f"{channel}: {problem}"})
        return None, None, None, why_not

    def _channel_problem(
        self, channel: str, purpose: str, profile: Profile, contact: ContactState, template: str
    ) -> str | None:
        if channel in self.killed:
            return "kill switch"
        if channel in contact.suppressed:
            return f"suppressed ({contact.suppressed[channel]})"
        if channel == "sms":
            if profile.phone is None:
                return "no phone number"
            if not profile.consents("sms", purpose):
                return f"no SMS consent for {purpose}"
        else:
            if profile.email is None:
                return "no email address"
            if purpose == "marketing" and not profile.email_marketing:
                return "no email marketing consent"
            if purpose == "marketing" and self.config.marketing_list in contact.lists:
                left = contact.lists[self.config.marketing_list]
                return f"left the {self.config.marketing_list} list ({left})"
        if not self.templates.has(template, channel):
            return f"template {template} has no {channel} variant"
        return None

    def _render(
        self, msg: OutboundMessage, channel: str, profile: Profile
    ) -> tuple[Rendered | None, str | None]:
        tz = profile.timezone or self.config.default_timezone
        locale = profile.locale or self.config.default_locale
        context = {
            **msg.context,
            "brand": self.brand,
            "customer": {"timezone": tz, "locale": locale, "tier": profile.tier},
        }
        if channel == "email":  # the channel puts the signed link in its place
            context["unsubscribe_url"] = UNSUBSCRIBE_MARKER
        try:
            rendered = self.templates.render(msg.template, channel, locale, context)
        except TemplateRenderError as exc:
            return None, f"template error: {exc}"
        budget = self.templates.max_segments(msg.template)
        segments = rendered.segments
        if channel == "sms" and budget is not None and segments and segments.segments > budget:
            return None, f"{segments.segments} SMS segments over the budget of {budget}"
        return rendered, None

    def _capped(self, contact: ContactState, now: datetime, tz: ZoneInfo) -> str:
        caps = self.config.marketing_caps
        today = now.astimezone(tz).date()
        sent_today = sum(
            1 for t in contact.marketing if datetime.fromtimestamp(t, tz).date() == today
        )
        if sent_today >= caps.per_local_day:
            limit = caps.per_local_day
            return f"marketing cap: {sent_today} already sent today (local), limit {limit}"
        window = caps.rolling.window.total_seconds()
        recent = sum(1 for t in contact.marketing if now.timestamp() - window < t)
        if recent >= caps.rolling.count:
            span = format_duration(caps.rolling.window)
            return f"marketing cap: {recent} sent in the last {span}, limit {caps.rolling.count}"
        return ""

    def commit(
        self, msg: OutboundMessage, decision: MessageDecision, contact: ContactState, now: float
    ) -> None:
        """Record what was decided in the customer's contact state."""
        if decision.status in ("sent", "deferred"):
            contact.notices[msg.notice] = (now, msg.message_id)
        elif contact.notices.get(msg.notice, (0.0, ""))[1] == msg.message_id:
            del contact.notices[msg.notice]  # a deferred notice that finally did not go
        if decision.status == "sent":
            if msg.category == "service_failure":
                contact.service_failure_at = now
            if msg.purpose == "marketing":
                contact.marketing.append(now)


def in_quiet_hours(local: time, quiet: QuietHours) -> bool:
    """Whether a local wall-clock time falls inside the quiet window."""
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end


def next_allowed(now: datetime, tz: ZoneInfo, quiet: QuietHours) -> datetime | None:
    """None if ``now`` is outside quiet hours, else the first allowed minute after (UTC)."""
    local = now.astimezone(tz)
    if not in_quiet_hours(local.time(), quiet):
        return None
    day = local.date()
    if quiet.start > quiet.end and local.time() >= quiet.start:
        day += timedelta(days=1)
    candidate = datetime.combine(day, quiet.end, tzinfo=tz).astimezone(UTC)
    # A DST jump can move the wall-clock end: step forward out of the window if it landed
    # inside, then back while the minute before is already allowed (an end inside a gap).
    for _ in range(24 * 60):
        if candidate > now and not in_quiet_hours(candidate.astimezone(tz).time(), quiet):
            break
        candidate += timedelta(minutes=1)
    else:
        raise ValueError(f"quiet hours {quiet.start}-{quiet.end} leave no allowed minute")
    step = timedelta(minutes=1)
    while candidate - step > now and not in_quiet_hours(
        (candidate - step).astimezone(tz).time(), quiet
    ):
        candidate -= step
    return candidate
