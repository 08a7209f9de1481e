"""Datasets: readers of the official release layouts, AU labels, tf.data input.

Only this sub-package imports TensorFlow (in `pipeline` and `tfds`); the readers
are pure Python and NumPy.
"""
