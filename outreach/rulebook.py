"""Load a rules folder: ``policy.yaml``, ``templates/*.yaml`` and the rule files, all checked.

Everything wrong is reported at once, each problem as ``file:line:col: field: message``; a
folder with any problem is refused as a whole (a running engine keeps its previous rules).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outreach.agents.executor import RulePlaybook
from outreach.agents.guardrails import GuardrailsConfig
from outreach.agents.playbooks import PLAYBOOKS
from outreach.outbound.policy import ContactPolicyConfig
from outreach.outbound.templates import TemplateCatalog
from outreach.rules.compile import CompiledRules, compile_rules
from outreach.rules.durations import Duration
from outreach.rules.model import RuleSpec
from outreach.rules.yamlfile import Problem, RuleFileError, YamlDoc, load_yaml

POLICY_FILE = "policy.yaml"
TEMPLATES_DIR = "templates"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Brand(_Config):
    """Who the messages come from; available to templates as ``brand``."""

    name: str = Field(min_length=1)
    support_url: str
    support_email: str
    postal_address: str = Field(description="required in marketing email footers")


class EngineSettings(_Config):
    """How long the engine remembers things."""

    dedup_window: Duration = Field(description="an event id seen again within this is a duplicate")
    state_ttl: Duration = Field(
        description="forget a subject untouched this long with no open work"
    )


class PolicyFile(_Config):
    """``rules/policy.yaml``."""

    brand: Brand
    links: dict[str, str] = Field(description="URLs with {placeholders}, e.g. update_payment")
    engine: EngineSettings
    guardrails: GuardrailsConfig
    contact: ContactPolicyConfig


@dataclass
class RuleBook:
    """A loaded, fully checked rules folder."""

    folder: Path
    policy: PolicyFile
    templates: TemplateCatalog
    rules: CompiledRules
    specs: dict[str, tuple[RuleSpec, YamlDoc]]
    playbooks: dict[str, RulePlaybook]
    fingerprint: str


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _load_policy(folder: Path, problems: list[Problem]) -> PolicyFile | None:
    path = folder / POLICY_FILE
    shown = _display(path, folder)
    if not path.is_file():
        problems.append(Problem(shown, 1, 1, "", "missing: every rules folder needs policy.yaml"))
        return None
    doc = load_yaml(path, shown)
    try:
        return PolicyFile.model_validate(doc.data)
    except ValidationError as exc:
        problems.extend(doc.validation_problems(exc))
        return None


def _rule_files(folder: Path) -> list[Path]:
    files = [*folder.glob("*.yaml"), *folder.glob("*.yml")]
    return sorted(f for f in files if f.name != POLICY_FILE)


def _load_rule(
    path: Path, folder: Path, problems: list[Problem]
) -> tuple[RuleSpec, YamlDoc] | None:
    try:
        doc = load_yaml(path, _display(path, folder))
    except RuleFileError as exc:
        problems.extend(exc.problems)
        return None
    if not isinstance(doc.data, dict):
        problems.append(doc.problem((), "a rule file must be a mapping of fields (id, trigger...)"))
        return None
    try:
        return RuleSpec.model_validate(doc.data), doc
    except ValidationError as exc:
        problems.extend(doc.validation_problems(exc))
        return None


def _marketing_problems(
    playbooks: dict[str, RulePlaybook], policy: PolicyFile, templates: TemplateCatalog
) -> list[Problem]:
    """Compliance of every template some rule sends as marketing (located in the template)."""
    marketing = sorted({t for b in playbooks.values() for t in _marketing_templates(b)})
    brand = policy.brand.model_dump()
    return [p for t in marketing for p in templates.marketing_problems(t, brand)]


def _acceptance_problems(
    playbooks: dict[str, RulePlaybook], policy: PolicyFile, templates: TemplateCatalog
) -> list[Problem]:
    """An offer that waits for the customer's YES must ask for it in every SMS variant."""
    brand = policy.brand.model_dump()
    asking = sorted({
        str(getattr(bound.params, name))
        for bound in playbooks.values()
        if getattr(bound.params, "acceptance", None) is not None
        for name in getattr(bound.playbook, "acceptance_templates", ())
    })  # fmt: skip
    why = (
        "announces an offer applied only on a YES reply (params.acceptance), so its sms text "
        "must ask for it (e.g. 'Reply YES to accept')"
    )
    return [p for t in asking for p in templates.sms_problems(t, brand, r"\bYES\b", why)]


def _marketing_templates(bound: RulePlaybook) -> list[str]:
    """The templates a rule's playbook sends as marketing."""
    fields: tuple[str, ...] = getattr(bound.playbook, "marketing_templates", ())
    if getattr(bound.params, "purpose", None) == "marketing":
        fields = bound.playbook.templates
    return [str(getattr(bound.params, name)) for name in fields]


def _bind_playbook(
    spec: RuleSpec,
    doc: YamlDoc,
    policy: PolicyFile | None,
    templates: TemplateCatalog | None,
    problems: list[Problem],
) -> RulePlaybook | None:
    """Check the rule's playbook, parameters and templates (each part that can be checked)."""
    playbook = PLAYBOOKS.get(spec.playbook)
    if playbook is None:
        known = ", ".join(sorted(PLAYBOOKS))
        problems.append(
            doc.problem(("playbook",), f"unknown playbook '{spec.playbook}'; known: {known}")
        )
        return None
    if spec.trigger not in playbook.triggers:
        allowed = ", ".join(sorted(playbook.triggers))
        problems.append(doc.problem(("trigger",), f"playbook {spec.playbook} runs on {allowed}"))
    missing = [name for name in playbook.links if policy is not None and name not in policy.links]
    if missing:
        message = f"playbook {spec.playbook} needs policy.yaml links: {', '.join(missing)}"
        problems.append(doc.problem(("playbook",), message))
    if policy is not None and spec.playbook not in policy.guardrails.playbooks:
        problems.append(
            doc.problem(
                ("playbook",),
                f"policy.yaml guardrails.playbooks has no tool allow-list for {spec.playbook}",
            )
        )
    try:
        params = playbook.params.model_validate(spec.params)
    except ValidationError as exc:
        problems.extend(doc.validation_problems(exc, ("params",)))
        return None
    if templates is not None:
        _check_templates(doc, playbook.templates, params, templates.ids(), problems)
    return RulePlaybook(playbook, params, spec.holdout)


def _check_templates(
    doc: YamlDoc,
    fields: tuple[str, ...],
    params: Any,
    known_ids: frozenset[str],
    problems: list[Problem],
) -> None:
    for field_name in fields:
        template = getattr(params, field_name)
        if template not in known_ids:
            known = ", ".join(sorted(known_ids)) or "none"
            message = f"no template '{template}' in templates/; known: {known}"
            problems.append(doc.problem(("params", field_name), message))


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load_rulebook(folder: Path) -> RuleBook:
    """Load and check ``folder``; raises ``RuleFileError`` listing every problem."""
    if not folder.is_dir():
        raise RuleFileError([Problem(str(folder), 1, 1, "", "not a readable rules folder")])
    problems: list[Problem] = []
    policy = _load_policy(folder, problems)
    templates: TemplateCatalog | None = None
    try:
        default_locale = policy.contact.default_locale if policy is not None else "en"
        templates = TemplateCatalog.load(
            folder / TEMPLATES_DIR, default_locale=default_locale, display_root=folder.parent
        )
    except RuleFileError as exc:
        problems.extend(exc.problems)  # rules naming templates are not checked against them
    loaded: dict[str, tuple[RuleSpec, YamlDoc]] = {}
    for path in _rule_files(folder):
        result = _load_rule(path, folder, problems)
        if result is None:
            continue
        spec, doc = result
        if spec.id in loaded:
            first = loaded[spec.id][1].path
            problems.append(doc.problem(("id",), f"rule id '{spec.id}' is already used by {first}"))
            continue
        loaded[spec.id] = result
    if not loaded and not problems:
        problems.append(
            Problem(str(folder), 1, 1, "", "no rule files (*.yaml besides policy.yaml)")
        )
    if policy is not None and templates is not None:
        problems.extend(templates.check(policy.brand.model_dump()))
    playbooks = {}
    for spec, doc in loaded.values():
        bound = _bind_playbook(spec, doc, policy, templates, problems)
        if bound is not None:
            playbooks[spec.id] = bound
    if policy is not None and templates is not None:
        problems.extend(_marketing_problems(playbooks, policy, templates))
        problems.extend(_acceptance_problems(playbooks, policy, templates))
    compiled, compile_problems = compile_rules(list(loaded.values()))
    problems.extend(compile_problems)
    if problems or compiled is None or policy is None or templates is None:
        raise RuleFileError(problems)
    files = [
        *_rule_files(folder),
        folder / POLICY_FILE,
        *sorted((folder / TEMPLATES_DIR).glob("*.y*ml")),
    ]
    return RuleBook(folder, policy, templates, compiled, loaded, playbooks, _fingerprint(files))


def describe(book: RuleBook) -> list[dict[str, Any]]:
    """One line of facts per rule, for ``rules check`` and the API."""
    out = []
    for rule_id, (spec, doc) in sorted(book.specs.items()):
        out.append(
            {
                "id": rule_id,
                "version": spec.version,
                "file": doc.path,
                "trigger": spec.trigger,
                "playbook": spec.playbook,
                "enabled": spec.enabled,
                "shadow": spec.shadow,
                "holdout": spec.holdout,
                "tests": len(spec.tests),
            }
        )
    return out
