"""Rules: rule-file models, YAML loading with file:line errors, the expression language,
per-customer windows and the evaluation that turns events into signals.

Owns detection only; what to do about a signal is ``outreach.agents``.
Must not import: faust, aiokafka, twilio, sendgrid, openai, fastapi, sqlalchemy.
"""
