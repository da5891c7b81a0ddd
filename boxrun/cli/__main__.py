"""`python -m boxrun.cli`."""

from boxrun.cli import main

main()
