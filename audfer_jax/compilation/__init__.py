"""The library of `audfer-jax compile`: the train step compiled for a TPU slice on any host.

Pod readiness without a pod (MaxText's `train_compile.py` idea): libtpu
describes a named slice without any TPU (`jax.experimental.topologies`, its
compile-only devices), and XLA:TPU compiles for it on this host.

* `topologies`: the slice (`Slice`, `parse_topology`, `load_slice`,
  `libtpu_available`), the HBM per chip of each generation (`HBM_GIB`), and
  `quiet_stderr` for what libtpu and XLA print.
* `programs`: what `audfer-jax train` runs on that slice (`build_programs`):
  the config's model, optimizer, AU loss constants, device-side augmentation
  and `steps.make_train_step`, jitted by `parallel.jit_step` over a
  `('data',)` mesh of the slice's chips (state replicated and donated, batch
  sharded), and the evaluation step with its multi-view batch
  (`steps.jit_eval_step`). No data is read: the batch shapes come from the
  config (`batch_specs`), the state is abstract
  (`model_state.ModelState.abstract_state`). `compile_program` lowers and
  compiles one of them into a `Compiled` (FLOPs, HBM per chip from
  `memory_analysis`); `memory_line` words it.
* `max_batch`: the largest per-chip batch whose train step fits
  (`search_max_batch`): memory grows about linearly in the batch, so two
  compiles fit a line, and compiles next to its prediction confirm the edge.
* `report`: `run`, the command's whole job: the slice, the batch per chip and
  per host, the compile seconds, XLA's FLOPs per training clip, the HBM per
  chip of both programs against the chip's HBM, and whether they fit.

What differs from a TPU host: nothing in the program (the same libtpu compiles
it); the HBM a real chip leaves free to programs is somewhat less than its
datasheet size (runtime reservations), hence `--hbm-gib`. No step is run, so
nothing here is a speed measurement (XLA's `optimal_seconds` is not reported).
GPU: JAX 0.10.2 has no deviceless CUDA topology (jax issues #23971, #28376).
"""
