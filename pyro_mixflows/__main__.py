"""``python -m pyro_mixflows``: the ``pyro-mixflows`` command (see ``pyro_mixflows.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
