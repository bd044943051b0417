"""tfvae: the variational auto-encoder of Kingma & Welling in Keras 3 and TFP."""

__version__ = "0.1.0"
