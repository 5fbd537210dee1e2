"""``python -m modelkeep``: the same command line as the ``modelkeep`` script."""

from modelkeep.cli import main

if __name__ == "__main__":
    main()
