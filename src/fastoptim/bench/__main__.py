"""The measuring worker ``fastoptim bench`` re-executes with the malloc environment set."""

import sys

from .runner import main

sys.exit(main())
