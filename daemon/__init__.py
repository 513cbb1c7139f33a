"""The mevwatch daemon: CLI, config, supervisor, store, HTTP, systemd, state, logging."""
