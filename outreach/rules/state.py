"""Per-customer state the rules read: profile, sliding windows, baselines, latest events.

State is plain data (msgspec structs of floats, strings, lists and dicts) so the live runtime
can persist it in one column and the replay runtime can hold 100k customers cheaply. Times are
epoch seconds. Keys are the stable labels of the registry's specs (``payment.failed||``), not
list positions, so state written under one rule set is still read right after a reload.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from typing import Any

import msgspec

from outreach.events import CustomerUpdatedData


class Profile(msgspec.Struct, kw_only=True):
    """What we know of the customer from ``customer.updated`` events."""

    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    tier: str = "standard"
    sms_transactional: bool = False
    sms_marketing: bool = False
    email_transactional: bool = False
    email_marketing: bool = False
    known: bool = False  # a customer.updated has been seen

    def apply(self, data: CustomerUpdatedData) -> None:
        """Apply a partial update: absent fields unchanged, explicit null clears (for a consent
        flag: withdrawn)."""
        self.known = True
        present = data.model_fields_set
        for name in ("email", "phone", "timezone", "locale"):
            if name in present:
                setattr(self, name, getattr(data, name))
        if "tier" in present:
            self.tier = data.tier or "standard"
        consent = data.consent
        if consent is None:
            return
        for channel in ("sms", "email"):
            granted = getattr(consent, channel)
            if granted is None:
                continue
            for purpose in granted.model_fields_set:  # explicit null withdraws, like a field
                setattr(self, f"{channel}_{purpose}", bool(getattr(granted, purpose)))

    def consents(self, channel: str, purpose: str) -> bool:
        """Whether the customer consented to ``channel`` for ``purpose``."""
        return bool(getattr(self, f"{channel}_{purpose}"))


class Window(msgspec.Struct, array_like=True):
    """Timestamps and values of one series, oldest first."""

    ts: list[float] = msgspec.field(default_factory=list)
    vals: list[float] = msgspec.field(default_factory=list)

    def add(self, ts: float, value: float, retention: float) -> None:
        """Insert in time order and forget what no window can reach any more."""
        if not self.ts or ts >= self.ts[-1]:
            self.ts.append(ts)
            self.vals.append(value)
        else:
            i = bisect_right(self.ts, ts)
            self.ts.insert(i, ts)
            self.vals.insert(i, value)
        horizon = self.ts[-1] - retention
        if self.ts[0] <= horizon:
            cut = bisect_right(self.ts, horizon)
            del self.ts[:cut]
            del self.vals[:cut]

    def span(self, now: float, window: float) -> tuple[int, int]:
        """Index range of entries in ``(now - window, now]``."""
        return bisect_right(self.ts, now - window), bisect_right(self.ts, now)


class Latest(msgspec.Struct, array_like=True):
    """The newest event of a spec: its time and its data as JSON-ready values."""

    ts: float
    data: dict[str, Any]


class RuleState(msgspec.Struct, kw_only=True):
    """Everything the rules of one customer remember between events."""

    seen: dict[str, float] = msgspec.field(default_factory=dict)  # event_id -> occurred_at
    series: dict[str, Window] = msgspec.field(default_factory=dict)
    baselines: dict[str, dict[str, list[float]]] = msgspec.field(default_factory=dict)
    latest: dict[str, Latest] = msgspec.field(default_factory=dict)
    signals: dict[str, list[float]] = msgspec.field(default_factory=dict)
    cooldowns: dict[str, float] = msgspec.field(default_factory=dict)

    def forget_seen(self, before: float) -> None:
        """Forget event ids that occurred before ``before`` (the dedup window's start).

        Ids are kept in arrival order, which is nearly time order, so only the oldest few are
        visited; an id that arrived late lingers until those before it expire."""
        seen = self.seen
        stale = []
        for event_id, ts in seen.items():
            if ts >= before:
                break
            stale.append(event_id)
        for event_id in stale:
            del seen[event_id]

    def record_signal(self, rule_id: str, ts: float, retention: float) -> None:
        """Remember that ``rule_id`` fired, for ``signaled()`` in other rules."""
        times = self.signals.setdefault(rule_id, [])
        insort(times, ts)
        horizon = times[-1] - retention
        while times and times[0] <= horizon:
            times.pop(0)


class ChannelConsentView:
    """``customer.consent.sms`` in expressions."""

    __slots__ = ("transactional", "marketing")

    def __init__(self, transactional: bool, marketing: bool) -> None:
        self.transactional = transactional
        self.marketing = marketing


class ConsentView:
    """``customer.consent`` in expressions."""

    __slots__ = ("sms", "email")

    def __init__(self, profile: Profile) -> None:
        self.sms = ChannelConsentView(profile.sms_transactional, profile.sms_marketing)
        self.email = ChannelConsentView(profile.email_transactional, profile.email_marketing)


class CustomerView:
    """``customer`` in expressions: a read-only view of the profile, built on demand."""

    __slots__ = ("_profile", "_suppressed", "_consent", "_default_tz", "_default_locale")

    def __init__(
        self,
        profile: Profile,
        suppressed: dict[str, str],
        default_tz: str,
        default_locale: str = "en",
    ) -> None:
        self._profile = profile
        self._suppressed = suppressed
        self._consent: ConsentView | None = None
        self._default_tz = default_tz
        self._default_locale = default_locale

    @property
    def tier(self) -> str:
        return self._profile.tier

    @property
    def locale(self) -> str:
        """The customer's locale, or the configured default (what messages will use)."""
        return self._profile.locale or self._default_locale

    @property
    def language(self) -> str:
        return self.locale.split("-")[0]

    @property
    def country(self) -> str | None:
        """The region of the customer's own locale (``fr-CA`` -> ``CA``), if it has one."""
        locale = self._profile.locale
        if locale is None:
            return None
        regions = [p for p in locale.split("-")[1:] if len(p) == 2 and p.isalpha()]
        return regions[0].upper() if regions else None

    @property
    def timezone(self) -> str:
        return self._profile.timezone or self._default_tz

    @property
    def has_phone(self) -> bool:
        return self._profile.phone is not None and "sms" not in self._suppressed

    @property
    def has_email(self) -> bool:
        return self._profile.email is not None and "email" not in self._suppressed

    @property
    def consent(self) -> ConsentView:
        if self._consent is None:
            self._consent = ConsentView(self._profile)
        return self._consent

    @property
    def known(self) -> bool:
        return self._profile.known
