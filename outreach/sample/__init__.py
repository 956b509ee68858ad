"""Synthetic event traffic: a deterministic generator of realistic input events.

``generate`` and ``write_sample`` are behind ``outreach sample``; used by demos, tests and
benchmarks. The output is JSON lines that pass ``outreach.events.parse_event``, in
non-decreasing ``occurred_at`` order, and the same arguments always give the same bytes.
``catalog`` holds the tables (regions, metrics, decline codes), ``simulation`` the generator.

Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""

from outreach.sample.catalog import DEFAULT_START, HARD_DECLINES
from outreach.sample.simulation import generate, write_sample

__all__ = ["DEFAULT_START", "HARD_DECLINES", "generate", "write_sample"]
