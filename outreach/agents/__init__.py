"""Agents: playbooks (planners), remediation tools, guardrails and the executor that turns a
signal's plan into decided actions and messages.

Side effects leave only as ``Effect`` records for a ``Connector`` port to perform.
Must not import (outside adapter modules): faust, aiokafka, twilio, sendgrid, openai,
fastapi, sqlalchemy.
"""
