"""The host agent: capture process events, enrich them and publish them to the raw topic.

Modules: ``capture`` (the backend contract), ``procfs`` (the /proc polling backend),
``publish`` (Kafka and JSON-lines outputs), ``run`` (the agent loop).
"""
