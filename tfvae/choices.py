"""The named options a run accepts, shared by the library, config checks and CLI.

Kept free of TensorFlow imports so the command line can offer them instantly.
"""

ARCHS = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "elu", "softplus")
BINARIZATIONS = ("dynamic", "static", "none")
STRATEGIES = ("auto", "default", "one-device", "mirrored", "multi-worker", "tpu")
OBJECTIVES = ("elbo", "iwae")
LR_SCHEDULES = ("constant", "burda", "cosine")
