"""``python -m mimir``: the command-line interface."""

from mimir.cli import main

if __name__ == "__main__":  # a spawned child process imports this module again and must not rerun the CLI
    main()
