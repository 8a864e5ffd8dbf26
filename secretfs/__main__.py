"""Entry point for ``python -m secretfs``."""

from secretfs.cli import main

main()
