"""`python -m policyalign` runs the `pa` command line."""

from .cli import main

main()
