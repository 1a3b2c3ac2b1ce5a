"""`python -m tunesmith.cli`: the same command line as the installed `tunesmith`."""

from tunesmith.cli import main

main()
