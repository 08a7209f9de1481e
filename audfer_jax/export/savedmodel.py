"""The TensorFlow SavedModel: `savedmodel/`, run with TensorFlow alone (or TF Serving).

    model = tf.saved_model.load("DIR/savedmodel")
    out = model.signatures["serving_default"](clips=tf.constant(clips))   # uint8
    out["probs"], out["au_probs"], out["logits"], out["au_logits"]        # float32

Made with `jax2tf.convert` and `tf.saved_model.save`. jax2tf serialises
natively: the forward's StableHLO sits inside one `XlaCallModule` op. In JAX
0.10.2 that is jax2tf's only mode (the graph-of-TF-ops mode was removed in
jax-ml/jax PR #31404) and the `native_serialization=` argument is deprecated,
so it is not passed. The variables are `tf.Variable`s, stored in `variables/`
like any SavedModel's (not constants of the graph, which would put the full
MAE-DFER's 340 MB into `saved_model.pb`). The batch axis is polymorphic
(`polymorphic_shapes="(b, ...)"`), the signature's input
`clips: [None, T, S, S, 3] uint8`. No gradient is saved (`with_gradient=False`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from audfer_jax import hints
from audfer_jax import paths
from audfer_jax.export import forward as forward_lib
from audfer_jax.export.manifest import ArtifactError

DIRNAME = "savedmodel"
SIGNATURE = "serving_default"
INPUT_NAME = "clips"


def write(directory: str, model: Any, variables: Any, input_shape: Sequence[int],
          platforms: Sequence[str]) -> list[str]:
    """Converts the forward of `model` with jax2tf and saves it as a SavedModel.

    Args:
        directory: the SavedModel folder to write (must not exist).
        model, variables: as `jax_format.export`.
        input_shape: `(T, S, S)`.
        platforms: lowerings to embed (`native_serialization_platforms`).

    Returns:
        The layer forms traced (sorted).

    Raises:
        ExportError: the conversion failed, or a CPU-only form was traced.
        FileExistsError: `directory` exists.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
    from audfer_jax.models import platform  # pylint: disable=g-import-not-at-top
    if paths.exists(directory):
        raise FileExistsError(f"{directory}: already exists")
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
            lambda a: tf.Variable(a, trainable=False), _tf_structure(variables))
    converted = jax2tf.convert(forward_lib.make_forward(model),
                               polymorphic_shapes=[None, "(b, ...)"], with_gradient=False,
                               native_serialization_platforms=tuple(platforms))
    t, h, w = (int(d) for d in input_shape)

    @tf.function(autograph=False, input_signature=[
            tf.TensorSpec([None, t, h, w, 3], tf.uint8, name=INPUT_NAME)])
    def serve(clips):
        return converted(module.variables_tree, clips)

    module.serve = serve
    with platform.record_forms() as forms:
        try:
            concrete = serve.get_concrete_function()
        except Exception as e:  # pylint: disable=broad-except
            raise forward_lib.ExportError(f"jax2tf could not convert the model: "
                                          f"{hints.one_line(e)[:300]}") from None
    names = forward_lib.check_portable(forms, "SavedModel")
    tf.saved_model.save(module, directory, signatures={SIGNATURE: concrete})
    return names


def _tf_structure(variables: Any) -> Any:
    """The variables as nested plain dicts of NumPy arrays (what tf.nest and tf.Module track)."""
    if isinstance(variables, dict) or hasattr(variables, "items"):
        return {str(k): _tf_structure(v) for k, v in variables.items()}
    return np.asarray(variables)


def read(directory: str) -> Callable[[np.ndarray], dict]:
    """The serving signature of the SavedModel in `directory`: `clips -> {name: array}`.

    The function has the attribute `input_shape`: `(T, S, S, 3)` of its input.

    Raises:
        ArtifactError: missing, unreadable or damaged SavedModel, or no
            `serving_default` signature taking `clips`.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not paths.isfile(paths.join(directory, "saved_model.pb")):
        raise ArtifactError(f"{paths.join(directory, 'saved_model.pb')}: missing")
    try:
        loaded = tf.saved_model.load(directory)
    except Exception as e:  # pylint: disable=broad-except
        raise ArtifactError(f"{directory}: not a loadable SavedModel "
                            f"({type(e).__name__}: {hints.one_line(e)[:300]})") from None
    fn = loaded.signatures.get(SIGNATURE)
    if fn is None or INPUT_NAME not in fn.structured_input_signature[1]:
        raise ArtifactError(f"{directory}: no {SIGNATURE} signature taking {INPUT_NAME!r}")

    def call(clips: np.ndarray) -> dict:
        out = fn(**{INPUT_NAME: tf.constant(clips, tf.uint8)})
        return {k: v.numpy() for k, v in out.items()}

    call.loaded = loaded      # keeps the variables alive with the signature
    call.input_shape = tuple(fn.structured_input_signature[1][INPUT_NAME].shape[1:])
    return call
