"""Adapters of the agents' ports to model providers (openai SDK) and the evaluation runner.

The only part of ``outreach.agents`` that may import openai; the core never imports it.
"""
