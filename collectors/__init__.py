"""Collectors: one module per kind, each registering itself with ``@register``."""
