"""`python -m distill …` is the `distill` command."""
from distill.flows.cli import main

main()
