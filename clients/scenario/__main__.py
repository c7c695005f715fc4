"""`python -m clients.scenario worker ...`: how the runner starts each process."""

import sys

from .worker import worker_main

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    sys.exit(worker_main(sys.argv[2:]))
sys.exit(f"usage: {sys.argv[0]} worker FILE PROCESS INDEX --socket PATH")
