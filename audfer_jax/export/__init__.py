"""Exported models: a checkpoint's evaluation forward as files that run without audfer_jax.

`audfer-jax export --checkpoint RUN --out DIR` writes into DIR:

* `model.jax_export`: a `jax.export` serialised program (`jax_format`), the
  variables inside it as constants, a symbolic batch axis, lowered for cpu
  and, where the program allows, cuda and tpu. Runs with `jax` alone.
* `savedmodel/`: a TensorFlow SavedModel (`savedmodel`; jax2tf's native
  serialisation, the variables as `tf.Variable`s) with the serving signature
  `serving_default(clips) -> probs, au_probs, logits, au_logits` and a
  dynamic batch axis. Runs with TensorFlow alone.
* `model.json` (`manifest`): the classes, the input, how frames are sampled
  and resized, the AU names, the source run, versions and file checksums.

Modules (import them directly; this package imports none of them):

* `forward`: the exported function `clips [B, T, S, S, 3] uint8 -> probs,
  au_probs, logits, au_logits` (float32), traced with lax's portable layer
  forms; the `--dtype` cast.
* `jax_format`, `savedmodel`: writing and reading each format.
* `manifest`: `model.json`, its checks and the file checksums;
  `ArtifactError`.
* `build`: `export_checkpoint`, the whole export of one checkpoint.

Reading an export back for `audfer-jax predict --model` is
`audfer_jax.inference.exported`. docs/export.md: the formats, loading them in
a fresh environment, what each cannot do.
"""
