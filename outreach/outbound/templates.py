"""Message templates: the text of every SMS and email, per channel and locale.

Owns the template file format (``rules/templates/*.yaml``, one template per file), its
located validation (``file:line:col: field: message``), compilation in a jinja2 sandbox
(``StrictUndefined``, no autoescape: SMS and plain-text email), locale fallback, the
localisation filters and ``check()``, which proves every variant renders its sample within
its SMS budget. Rendering never sends anything and never enforces the budget; callers decide.

Filters (localised in the variant's locale, times shown in ``customer.timezone``, default UTC):
``when`` (``Wed, Mar 4, 3:00 PM``), ``day`` (``Wed, Mar 4``), ``date`` (``Mar 4, 2026``),
``money(currency)`` on integer minor units, ``percent`` (``20`` -> ``20%``). Their output uses
plain spaces and apostrophes: CLDR's no-break spaces would silently turn an SMS into UCS-2.

Must not import faust, aiokafka, twilio, sendgrid, openai, fastapi or sqlalchemy.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from babel import UnknownLocaleError
from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from outreach.errors import TemplateRenderError
from outreach.outbound.filters import LOCALE_KEY, make_environment, parse_locale
from outreach.outbound.segments import SegmentInfo, count_segments
from outreach.outbound.unsubscribe import UNSUBSCRIBE_MARKER
from outreach.rules.yamlfile import Loc, Problem, RuleFileError, YamlDoc, load_yaml

Channel = Literal["sms", "email"]
_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


# --- the file format ------------------------------------------------------------------------

Variants = dict[str, Annotated[str, StringConstraints(min_length=1)]]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SmsSpec(_Spec):
    """The SMS text per locale, and the segment budget every variant must fit."""

    max_segments: int = Field(ge=1, le=10)
    text: Variants = Field(min_length=1)


class EmailSpec(_Spec):
    """The email subject and plain-text body per locale (the same locales for both)."""

    subject: Variants = Field(min_length=1)
    body: Variants = Field(min_length=1)


class TemplateSpec(_Spec):
    """One template file: an id, a sample context, and at least one channel."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
    description: str = ""
    sample: dict[str, Any] = Field(default_factory=dict)
    sms: SmsSpec | None = None
    email: EmailSpec | None = None

    @model_validator(mode="after")
    def _has_a_channel(self) -> TemplateSpec:
        if self.sms is None and self.email is None:
            raise ValueError("a template needs at least one channel: add 'sms:' or 'email:'")
        return self


def _template_line(exc: BaseException) -> int | None:
    lines = [
        f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"
    ]
    return lines[-1] if lines else None


# --- compiled catalog -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """One rendered message; ``segments`` only for SMS (the budget is the caller's call)."""

    template: str
    channel: Literal["sms", "email"]
    locale: str
    subject: str | None
    body: str
    segments: SegmentInfo | None


@dataclass(frozen=True)
class _Part:
    tag: str  # the locale as written in the file
    template: Template
    site: Problem  # where the source was written (message empty)


class _PartError(TemplateRenderError):
    """A render failure inside one part; ``check()`` locates it at that part."""

    def __init__(self, what: str, detail: str, part: _Part) -> None:
        super().__init__(f"{what}: {detail}")
        self.detail, self.part = detail, part


@dataclass(frozen=True)
class _Variant:
    tag: str
    body: _Part
    subject: _Part | None = None


@dataclass(frozen=True)
class _Compiled:
    id: str
    sample: Mapping[str, Any]
    max_segments: int | None
    channels: Mapping[str, Mapping[str, _Variant]]  # channel -> normalised tag -> variant


def _norm(tag: str) -> str:
    return tag.replace("_", "-").lower()


def _shown(path: Path, root: Path | None) -> str:
    if root is not None and path.is_relative_to(root):
        return str(path.relative_to(root))
    return str(path)


def _run(part: _Part, what: str, context: Mapping[str, Any]) -> str:
    try:
        return part.template.render(context).strip()
    except Exception as exc:  # any error inside a template is a render failure, wrapped
        line = _template_line(exc)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        detail = f"line {line} of the text: {message}" if line else message
        raise _PartError(what, detail, part) from exc


class TemplateCatalog:
    """Every message template, compiled once; renders by id, channel and locale."""

    def __init__(self, templates: Mapping[str, _Compiled], default_locale: str = "en") -> None:
        self._templates = dict(templates)
        self._default = _norm(default_locale)

    @classmethod
    def load(
        cls, folder: Path, default_locale: str = "en", display_root: Path | None = None
    ) -> TemplateCatalog:
        """Load ``*.yaml``/``*.yml`` in ``folder``; raises ``RuleFileError`` with every problem."""
        if not _TAG.match(default_locale):
            raise ValueError(f"default locale {default_locale!r} is not a locale tag")
        if not folder.exists():
            return cls({}, default_locale)
        if not folder.is_dir():
            raise RuleFileError([Problem(str(folder), 1, 1, "", "is not a templates folder")])
        files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        env, problems = make_environment(), []
        templates: dict[str, _Compiled] = {}
        first_seen: dict[str, str] = {}
        for path in files:
            shown = _shown(path, display_root)
            try:
                doc = load_yaml(path, shown)
            except RuleFileError as exc:
                problems.extend(exc.problems)
                continue
            compiled, found = _FileCompiler(doc, env, _norm(default_locale)).compile()
            problems.extend(found)
            if compiled is None:
                continue
            if compiled.id in templates:
                message = f"'{compiled.id}' is already the id of {first_seen[compiled.id]}"
                problems.append(doc.problem(("id",), f"{message}; ids must be unique"))
                continue
            templates[compiled.id], first_seen[compiled.id] = compiled, shown
        if problems:
            raise RuleFileError(problems)
        return cls(templates, default_locale)

    def ids(self) -> frozenset[str]:
        """Every template id."""
        return frozenset(self._templates)

    def has(self, template_id: str, channel: str) -> bool:
        """Whether ``template_id`` exists and has a ``channel`` variant."""
        return channel in self.channels(template_id)

    def channels(self, template_id: str) -> frozenset[str]:
        """The channels of ``template_id`` (empty if there is no such template)."""
        found = self._templates.get(template_id)
        return frozenset(found.channels) if found else frozenset()

    def max_segments(self, template_id: str) -> int | None:
        """The SMS segment budget of ``template_id`` (None without an SMS variant)."""
        found = self._templates.get(template_id)
        return found.max_segments if found else None

    def render(
        self,
        template_id: str,
        channel: str,
        locale: str | None,
        context: Mapping[str, Any],
    ) -> Rendered:
        """Render in the best locale (``fr-CA``, ``fr``, default); raises TemplateRenderError."""
        found = self._templates.get(template_id)
        if found is None:
            raise TemplateRenderError(f"there is no template '{template_id}'")
        variants = found.channels.get(channel)
        if variants is None:
            have = ", ".join(sorted(found.channels))
            raise TemplateRenderError(
                f"template '{template_id}' has no {channel} text (has {have})"
            )
        return self._render(found, channel, self._pick(variants, locale), context)

    def check(self, brand: Mapping[str, Any]) -> list[Problem]:
        """Render every variant with its sample; located problems for failures and SMS overruns.

        The context is ``brand``, the sample's values, and ``customer`` = the sample's customer
        (if any) with ``timezone`` defaulting to UTC and ``locale`` set to the variant's.
        """
        problems: list[Problem] = []
        for found in self._templates.values():
            for channel, variants in found.channels.items():
                for variant in variants.values():
                    problems.extend(self._check_variant(found, channel, variant, brand))
        return sorted(problems)

    def marketing_problems(self, template_id: str, brand: Mapping[str, Any]) -> list[Problem]:
        """What keeps ``template_id`` from being sent as marketing, located in its file.

        Every email variant must carry the one-click unsubscribe link (``{{ unsubscribe_url
        }}``, CAN-SPAM and RFC 8058) and the postal address (``{{ brand.postal_address }}``);
        every SMS variant must say how to opt out with the STOP keyword (CTIA: the first
        marketing SMS must; we ask it of every one, so no customer can miss it). Variants that
        do not render are left to ``check()``."""
        found = self._templates.get(template_id)
        if found is None:
            return []
        problems: list[Problem] = []
        address = str(brand.get("postal_address") or "")
        for channel, variants in found.channels.items():
            for variant in variants.values():
                try:
                    rendered = self._render(
                        found,
                        channel,
                        variant,
                        self._sample_context(found, channel, variant, brand),
                    )
                except TemplateRenderError:
                    continue
                missing = []
                if channel == "email":
                    if UNSUBSCRIBE_MARKER not in rendered.body:
                        missing.append("the unsubscribe link ({{ unsubscribe_url }})")
                    if not address or address not in rendered.body:
                        missing.append("the postal address ({{ brand.postal_address }})")
                elif not re.search(r"\bSTOP\b", rendered.body):
                    missing.append("how to opt out (e.g. 'Reply STOP to opt out')")
                if missing:
                    message = (
                        f"is sent as marketing, so its {channel} text must contain "
                        f"{' and '.join(missing)}"
                    )
                    problems.append(replace(variant.body.site, message=message))
        return problems

    def sms_problems(
        self, template_id: str, brand: Mapping[str, Any], pattern: str, why: str
    ) -> list[Problem]:
        """Every SMS variant of ``template_id`` must match ``pattern`` (a regular expression);
        each one that does not is a problem saying ``why``, located in the template."""
        found = self._templates.get(template_id)
        if found is None:
            return []
        problems: list[Problem] = []
        for variant in found.channels.get("sms", {}).values():
            try:
                context = self._sample_context(found, "sms", variant, brand)
                rendered = self._render(found, "sms", variant, context)
            except TemplateRenderError:
                continue  # check() reports it
            if not re.search(pattern, rendered.body):
                problems.append(replace(variant.body.site, message=why))
        return problems

    def _pick(self, variants: Mapping[str, _Variant], locale: str | None) -> _Variant:
        tag = _norm(locale or "")
        while tag:
            if tag in variants:
                return variants[tag]
            tag = tag.rpartition("-")[0]
        return variants[self._default]  # present in every channel: load() checks it

    def _render(
        self, found: _Compiled, channel: str, variant: _Variant, context: Mapping[str, Any]
    ) -> Rendered:
        what = f"template '{found.id}' ({channel}, {variant.tag})"
        subject = None
        if variant.subject is not None:
            subject = " ".join(_run(variant.subject, f"{what} subject", context).split())
        body = _run(variant.body, what, context)
        if not body or subject == "":
            raise TemplateRenderError(f"{what} renders to an empty {'subject' if body else 'text'}")
        segments = count_segments(body) if channel == "sms" else None
        kind: Channel = "sms" if channel == "sms" else "email"
        return Rendered(found.id, kind, variant.tag, subject, body, segments)

    @staticmethod
    def _sample_context(
        found: _Compiled, channel: str, variant: _Variant, brand: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What a variant is rendered with at check time (as the contact policy would)."""
        sample_customer = found.sample.get("customer")
        customer = dict(sample_customer) if isinstance(sample_customer, Mapping) else {}
        customer = {"timezone": "UTC", **customer, "locale": variant.tag}
        context = {"brand": brand, **found.sample, "customer": customer}
        if channel == "email":
            context["unsubscribe_url"] = UNSUBSCRIBE_MARKER
        return context

    def _check_variant(
        self, found: _Compiled, channel: str, variant: _Variant, brand: Mapping[str, Any]
    ) -> list[Problem]:
        context = self._sample_context(found, channel, variant, brand)
        try:
            rendered = self._render(found, channel, variant, context)
        except TemplateRenderError as exc:
            site, detail = variant.body.site, str(exc)
            if isinstance(exc, _PartError):
                site, detail = exc.part.site, exc.detail
            return [replace(site, message=f"does not render with the sample: {detail}")]
        info, budget = rendered.segments, found.max_segments
        if info is not None and budget is not None and info.segments > budget:
            message = (
                f"renders to {info.segments} SMS segments ({info.describe()}) but the budget is "
                f"{budget}; shorten the text or raise sms.max_segments"
            )
            return [replace(variant.body.site, message=message)]
        return []


# --- loading one file -----------------------------------------------------------------------


class _FileCompiler:
    """Validates and compiles one template file, collecting located problems."""

    def __init__(self, doc: YamlDoc, env: ImmutableSandboxedEnvironment, default: str) -> None:
        self.doc, self.env, self.default = doc, env, default
        self.problems: list[Problem] = []

    def compile(self) -> tuple[_Compiled | None, list[Problem]]:
        """The compiled template, or None and the problems."""
        if not isinstance(self.doc.data, dict):
            what = "is empty" if self.doc.data is None else "is not a mapping"
            return None, [self.doc.problem((), f"the file {what}; expected id, sms and/or email")]
        try:
            spec = TemplateSpec.model_validate(self.doc.data)
        except ValidationError as exc:
            return None, self.doc.validation_problems(exc)
        channels: dict[str, dict[str, _Variant]] = {}
        if spec.sms is not None:
            texts = self._parts(("sms", "text"), spec.sms.text)
            channels["sms"] = {key: _Variant(part.tag, part) for key, part in texts.items()}
        if spec.email is not None:
            channels["email"] = self._email(spec.email)
        if self.problems:
            return None, self.problems
        budget = spec.sms.max_segments if spec.sms else None
        return _Compiled(spec.id, spec.sample, budget, channels), []

    def _email(self, email: EmailSpec) -> dict[str, _Variant]:
        subjects = self._parts(("email", "subject"), email.subject)
        bodies = self._parts(("email", "body"), email.body)
        written = {
            "subject": {_norm(t): t for t in email.subject},
            "body": {_norm(t): t for t in email.body},
        }
        for field, other in (("subject", "body"), ("body", "subject")):
            for key in sorted(written[other].keys() - written[field].keys()):
                message = (
                    f"has no '{written[other][key]}' variant but email.{other} has one; "
                    "give subject and body the same locales"
                )
                self.problems.append(self.doc.problem(("email", field), message))
        return {
            key: _Variant(body.tag, body, subjects[key])
            for key, body in bodies.items()
            if key in subjects
        }

    def _parts(self, loc: Loc, sources: Mapping[str, str]) -> dict[str, _Part]:
        parts: dict[str, _Part] = {}
        seen: set[str] = set()
        for tag, source in sources.items():
            key = (*loc, tag)
            if not _TAG.match(tag) or not self._known_locale(tag):
                message = f"'{tag}' is not a locale tag babel knows; use e.g. en, fr, fr-CA, pt-BR"
                self.problems.append(self.doc.problem(key, message))
            elif _norm(tag) in seen:
                self.problems.append(self.doc.problem(key, f"locale '{tag}' is given twice"))
            else:
                part = self._compile_source(key, tag, source)
                if part is not None:
                    parts[_norm(tag)] = part
            seen.add(_norm(tag))
        if self.default not in {_norm(t) for t in sources}:
            message = f"has no '{self.default}' variant; the default locale is every fallback"
            self.problems.append(self.doc.problem(loc, message))
        return parts

    @staticmethod
    def _known_locale(tag: str) -> bool:
        try:
            parse_locale(tag)
        except (UnknownLocaleError, ValueError):
            return False
        return True

    def _compile_source(self, key: Loc, tag: str, source: str) -> _Part | None:
        try:
            template = self.env.from_string(source, globals={LOCALE_KEY: tag})
        except TemplateSyntaxError as exc:
            message = f"template error on line {exc.lineno} of the text: {exc.message}"
            self.problems.append(self.doc.problem(key, message))
            return None
        return _Part(tag, template, self.doc.problem(key, ""))
