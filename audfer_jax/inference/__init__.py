"""Inference: a checkpoint and a video in, expression and AU probabilities out.

Modules (import them directly; this package imports none of them, so that a
command pays only for what it uses):

* `video`: reading a video file or frame folder once (`read_input`), cutting
  it into timeline windows (`window_bounds`, `window_indices`); `PredictError`.
* `faces`: dlib face detection, one crop per clip (`detect_faces`,
  `NoFaceError`).
* `predictor`: a checkpoint -> a `Predictor` (model, variables, the run's
  sampling and AU prior), built through `model_state` as training builds it.
* `exported`: an export of `audfer-jax export` (`audfer_jax.export`) -> an
  `ExportedPredictor` that runs the jax.export artifact or the SavedModel
  (`predict --model`).
* `preprocess`: sampling, cropping and resizing a clip as the run's eval
  pipeline does (`prepare_clip`, `prepare_indices`, `check_frames`).
* `predict`: one clip's probabilities (`predict_clip`) and their text.
* `timeline`: every window of a long video (`predict_timeline`), as CSV/text.

Imports go one way: `timeline` -> `predict` -> `predictor`, `preprocess`,
`faces` -> `video`; `exported` -> `predictor`, `video` and the export
readers (`export.manifest`, `export.jax_format`, `export.savedmodel`). Nothing here imports the trainer or a command
(`audfer_jax/cli/predict.py` is the command).
"""
