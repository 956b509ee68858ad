"""Outbound: the contact policy, message templates, SMS segments and the channel port.

The policy and templates are pure; provider channels (twilio, sendgrid) are adapters.
Must not import in the policy/templates: faust, aiokafka, twilio, sendgrid, openai, fastapi,
sqlalchemy.
"""
