"""Observability of the engine's processes: log lines (JSON or text, with correlation ids,
secrets cut and personal data masked: ``logs``, ``redact``) and per-process Prometheus metrics
(``metrics``). The store-backed engine figures stay in ``outreach.api.metrics``.

Must not import: the engine's other packages (everything may import this).
"""
