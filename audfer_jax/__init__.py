"""audfer_jax: AU-DFER (arXiv 2507.07678) in JAX/Flax.

Dynamic facial expression recognition (DFER) with an auxiliary Action Unit (AU)
head trained by a prior-weighted BCE. Importing the package is cheap: the
sub-modules that pull in TensorFlow or torch are imported only where used.
"""

__version__ = "0.1.0"
