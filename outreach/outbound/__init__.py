"""Outbound: the contact policy, message templates and their filters, SMS segments.

All pure. Sent messages leave the core as ``Delivery`` records; the channel port and the
provider adapters (file, twilio, sendgrid) come with the live runtime.
Must not import in the policy/templates: faust, aiokafka, twilio, sendgrid, openai, fastapi,
sqlalchemy.
"""
