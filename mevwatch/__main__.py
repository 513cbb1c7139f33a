"""The ``mevwatch`` command and ``python -m mevwatch``."""

import gc
import sys


def main() -> int:
    """Run the command line with the cyclic garbage collector off until start-up is over.

    Start-up builds long-lived objects only (modules, pydantic validators, dataclasses): the collector's
    passes over them were about an eighth of the CPU `mevwatch run` used until ready (bench/startup.py).
    ``mevwatch run`` turns it on again once the daemon is ready, every other command once its arguments
    are parsed (daemon/cli.py).
    """
    gc.disable()
    try:
        from mevwatch.daemon.cli import main as cli_main

        return cli_main()
    finally:
        gc.enable()


if __name__ == "__main__":
    sys.exit(main())
