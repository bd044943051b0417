"""`python -m cli` runs the `tfvae` command."""

from cli.main import main

main()
