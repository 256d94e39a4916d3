"""`python -m service.cli`: the `latpred` command."""
from service.cli.main import main

main()
