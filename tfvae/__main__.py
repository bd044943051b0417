"""`python -m tfvae` runs the `tfvae` command."""

from tfvae.cli.main import main

main(prog_name="tfvae")
