"""``python -m scdask``: the command line, as ``scdask``."""

from scdask.cli import main

main()
