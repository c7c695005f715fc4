"""`python -m clients.preload`: build the preload library if needed and print its path."""

import sys

from . import main

sys.exit(main())
