"""moe_ebm_jax: multimodal VAEs with an EBM latent prior and Langevin inference, in JAX/Flax.

Importing the package registers the `polymnist` TFDS dataset.
"""

from moe_ebm_jax.data import polymnist  # noqa: F401  (registers the TFDS builder)

__version__ = '0.1.0'
