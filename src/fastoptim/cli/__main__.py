import sys

from fastoptim.cli import main

sys.exit(main())
