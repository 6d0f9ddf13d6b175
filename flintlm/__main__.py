"""`python -m flintlm` is the `flintlm` command."""

from flintlm.cli import main

main()
