"""``python -m mimir``: the command-line interface."""

from mimir.cli import main

main()
