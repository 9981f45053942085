"""``python -m mimir``: the command-line interface."""

from mimir.cli import main

if __name__ == "__main__":  # `python -m mimir`; importing this module runs nothing
    main()
