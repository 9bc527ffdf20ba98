"""``python -m intent.cli``: the same as the ``intent`` command."""

import sys

from intent.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
