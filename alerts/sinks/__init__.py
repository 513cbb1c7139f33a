"""Notification sinks: log, webhook, mail, alertmanager."""
