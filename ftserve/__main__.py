"""`python -m ftserve`: the `ftserve` command."""

from ftserve.control.cli import main

main()
