"""The deterministic playbooks shipped with the engine, by name."""

from __future__ import annotations

from outreach.agents.playbooks.base import Params, Playbook, PlaybookContext
from outreach.agents.playbooks.notify import Notify
from outreach.agents.playbooks.payment_recovery import PaymentRecovery
from outreach.agents.playbooks.retention import RenewalSave, RetentionOffer
from outreach.agents.playbooks.shipment_delay import ShipmentDelay

PLAYBOOKS: dict[str, Playbook] = {
    p.name: p
    for p in (ShipmentDelay(), PaymentRecovery(), RetentionOffer(), RenewalSave(), Notify())
}

__all__ = ["PLAYBOOKS", "Params", "Playbook", "PlaybookContext"]
