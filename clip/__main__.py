"""`python -m clip` and the `clip` console script: see clip/_cli/ (``clip --help`` lists the jobs)."""

import sys

from ._cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from ._cli.default import EXAMPLE_IMAGE
from ._cli.main import main

__all__ = ["main", "EXAMPLE_IMAGE", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

if __name__ == "__main__":
    sys.exit(main())
