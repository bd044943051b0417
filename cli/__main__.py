"""`python -m tfvae.cli` runs the `tfvae` command (as `python -m tfvae` does)."""

from tfvae.cli.main import main

main(prog_name="tfvae")
