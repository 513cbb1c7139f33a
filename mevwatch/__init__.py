"""mevwatch: a monitoring daemon for Ethereum MEV hosts."""

__all__ = ["__version__"]

__version__ = "0.1.0"
