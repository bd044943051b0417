"""The `tfvae` command-line application (click)."""
