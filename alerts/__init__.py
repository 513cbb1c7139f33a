"""Alerting: rules, engine, router, durable outbox and sinks."""
