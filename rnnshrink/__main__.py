"""``python -m rnnshrink`` runs the command line."""

from .cli import main

main()
