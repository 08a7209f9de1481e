"""Defaults shared by every experiment config in `configs/` (big_vision-style `get_config(arg)`).

A backbone config (`configs/former_dfer.py`, `m3dfel.py`, `mae_dfer.py`,
`demo.py`) starts from `base_config()` and sets its paper's recipe
(backbones.md "Recipe" paragraphs). Variants are chosen on the command line:

    audfer-jax train --config configs/m3dfel.py:dataset=ferv39k,loss=au_distinct \
        --workdir runs/m3dfel_ferv39k --config.batch_size=64

`arg` is a comma-separated list of `key=value` (`dataset`, `fold`, `loss`,
`prior`, `model`) parsed by `parse_arg`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Iterable, Sequence

import ml_collections

from audfer_jax import hints

DATASETS = ("dfew", "ferv39k", "mafw", "demo")
LOSSES = ("ce", "au", "au_none", "au_distinct", "au_minor", "au_from_data")
# Official fold counts: DFEW and MAFW have 5 folds, FERV39k one split (datasets.md);
# the demo set has DFEW's 5 folds (data/demo.py).
NUM_FOLDS = {"dfew": 5, "mafw": 5, "ferv39k": 1, "demo": 5}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"dataset=dfew,fold=2,loss=au"` over `defaults`.

    Values are converted to the type of the default (int, float, bool, str).

    Raises:
        ValueError: an entry without '=', a key not in `defaults` or a value
            that does not parse as the default's type; one line naming the
            entry, what was expected and the closest known key.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} is not key=value; "
                             f"expected e.g. {next(iter(out), 'key')}=...")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in out:
            raise ValueError(hints.unknown_choice("config argument", key, out))
        kind = type(out[key])
        if kind is bool:
            low = value.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(f"config argument {key}={value!r}: expected true or false")
            out[key] = low in _TRUE
        elif kind in (int, float):
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r}: expected "
                                 f"{'an integer' if kind is int else 'a number'}"
                                 ) from None
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def check_variant(dataset: str, fold: int, loss: str) -> None:
    """Raises ValueError for an unknown dataset or loss, or a fold out of range.

    The message names the config argument, its value, the valid choices and
    the closest one (`dataset=dfw` -> did you mean 'dfew'?).
    """
    if dataset not in DATASETS:
        raise ValueError(hints.unknown_choice("dataset", dataset, DATASETS))
    if loss not in LOSSES:
        raise ValueError(hints.unknown_choice("loss", loss, LOSSES))
    if not 1 <= fold <= NUM_FOLDS[dataset]:
        n = NUM_FOLDS[dataset]
        raise ValueError(f"fold={fold} is out of range: {dataset} has "
                         + (f"folds 1..{n}" if n > 1 else "one split (fold=1)"))


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with neutral defaults."""
    c = ml_collections.ConfigDict()
    c.model = "former_dfer"
    c.model_overrides = ml_collections.ConfigDict()
    # The fields of the typed data config (`audfer_jax.data.config.DataConfig`),
    # so that every field can be overridden: --config.data.num_frames=...
    from audfer_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
    c.data = data_config_lib.default_data_config()
    c.data.data_dir = "data/prepared"
    c.prepare_data = False        # write (demo) and prepare the fold first if missing
    c.demo = ml_collections.ConfigDict(dict(num_clips=2000, seed=0, image_size=112))
    c.seed = 0
    c.batch_size = 32             # global, over all devices and processes
    c.eval_batch_size = 0         # 0 = batch_size
    c.num_epochs = 100

    c.optim = ml_collections.ConfigDict(dict(
            optimizer="sgd", lr=0.01, min_lr=0.0, lr_batch_base=0, momentum=0.9,
            nesterov=False, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
            decay_rule="all", layer_decay=0.0, grad_clip_norm=0.0, schedule="step",
            step_epochs=40, gamma=0.1, warmup_epochs=0.0, warmup_lr_init=0.0))

    # AU-DFER loss (au_dfer_method.md section 2): L = (1 - lam) CE + lam L_AU.
    c.loss = "au"
    c.au = ml_collections.ConfigDict(dict(
            lam=0.25, scale=5.0, prior="dataset", prior_rescale="reference",
            per_class=False, minor_classes=("surprise", "disgust", "fear")))
    c.label_smoothing = 0.0
    c.mixup = ml_collections.ConfigDict(dict(
            enabled=False, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0,
            label_smoothing=0.1))

    c.strategy = "jit"            # or 'pmap' (explicit collectives)
    # Accelerator path (issue 9): compute dtype of the registered backbones
    # ('float32' | 'bfloat16' | 'float16'; parameters, optimizer state, softmax,
    # losses and BatchNorm statistics stay float32), what the blocks' backward
    # pass recomputes, and the generator of the dropout / drop-path stream
    # ('threefry' | 'rbg' | 'unsafe_rbg', `audfer_jax.rng`).
    c.dtype = "float32"
    # 'none' keeps every activation; 'full' keeps only each block's input and
    # recomputes the rest (least memory, about one more forward pass);
    # 'dots_with_no_batch_dims_saveable' / 'dots_saveable' keep the matrix
    # products (without / with attention's) and recompute the cheap
    # elementwise work. Old run configs' boolean `remat` reads as full/none.
    c.remat_policy = "none"
    # MAE-DFER's stacked blocks run as one loop (compiles ~10x faster than 16
    # unrolled copies); False gives the same values as straight-line code.
    c.scan_blocks = True
    c.rng_impl = "threefry"
    c.eval_every_epochs = 1
    c.best_metric = "war+uar"     # datasets.md section 8; or uar, war, au_f1_mean
    c.checkpoint_every_steps = 0  # 0 = epoch ends only
    c.keep_checkpoints = 2
    c.async_checkpoints = True
    # Seconds from the first SIGTERM/SIGINT until a process that has not
    # reached a step boundary and saved gives up (one line, exit 128 + signal);
    # under the 30 s Kubernetes and Cloud TPU give before SIGKILL. 0 = wait.
    c.preemption_grace_seconds = 20.0
    c.log_every_steps = 50
    c.progress_bar = True         # a tqdm bar when stdout is a terminal, else log lines
    c.prefetch_to_device = 2      # batches transferred ahead of the running step
    # Peak FLOP/s of one device for the MFU in the log; 0 = flops.PEAK_BF16_FLOPS
    # by device kind (GPUs, TPUs; none for CPUs).
    c.peak_flops = 0.0
    # JAX's persistent compilation cache ('' = off): a restarted or resumed run
    # does not compile again. JAX_COMPILATION_CACHE_DIR, when set, wins.
    c.compile_cache_dir = "~/.cache/audfer_jax/jax_cache"
    c.init_from = ""              # a variables checkpoint from `audfer-jax convert`
    c.stop_after_steps = 0        # testing: stop (as if killed) after this step

    c.multihost = False           # call jax.distributed.initialize()
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1
    return c


def apply_variant(c: ml_collections.ConfigDict, dataset: str, fold: int, loss: str
                  ) -> ml_collections.ConfigDict:
    """Sets dataset, fold and loss; MAFW (no published prior) estimates its prior."""
    check_variant(dataset, fold, loss)
    c.data.name = dataset
    c.data.fold = 0 if dataset == "ferv39k" else fold
    c.loss = loss
    if dataset == "mafw":
        # No published AU-expression matrix or pos_weight (au_dfer_method.md section 4).
        c.au.prior = "from_data"
        if loss in ("au", "au_distinct", "au_minor"):
            c.loss = "au_from_data"
            c.au.per_class = loss != "au"
    return c


# ---------------------------------------------------------------------------
# Configs: `path.py:arg` files and `--config.x=y` overrides.
# ---------------------------------------------------------------------------

def _split_spec(spec: str) -> tuple[str, str | None]:
    """`"configs/x.py:a=1"` -> `("configs/x.py", "a=1")`; no argument -> `(spec, None)`."""
    if ".py:" in spec:
        cut = spec.index(".py:") + 3
        return spec[:cut], spec[cut + 1:]
    return spec, None


def config_file_path(spec: str) -> str:
    """The file part of a `path/to/config.py[:arg]` spec."""
    return _split_spec(spec)[0]


def load_config_file(spec: str):
    """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`.

    The big_vision / ml_collections `config_flags` convention: everything after
    the first ':' that follows the `.py` file name is passed as the string
    argument (None when absent).

    Args:
        spec: `"configs/former_dfer.py:dataset=dfew,fold=1,loss=au"`.

    Returns:
        The `ml_collections.ConfigDict` the file returns.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no `get_config`.
    """
    path, arg = _split_spec(spec)
    # A config is Python to import: a local file, never a URL.
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found (from --config {spec!r})")
    name = "_audfer_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: no get_config(arg) function")
    return module.get_config(arg) if arg is not None else module.get_config()


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=value` (or `--config.a.b value`) from other flags.

    Returns:
        `(rest, overrides)`: the other arguments in order, and `(dotted key,
        value text)` pairs in order.

    Raises:
        ValueError: `--config.x` as the last argument without a value.
    """
    rest, overrides = [], []
    i = 0
    argv = list(argv)
    while i < len(argv):
        item = argv[i]
        if item.startswith("--config."):
            body = item[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            else:
                if i + 1 >= len(argv):
                    raise ValueError(f"{item} needs a value (--config.key=value)")
                key, value = body, argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def _parse_value(text: str, current: Any) -> Any:
    """Converts override text to the type of the field's current value."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if isinstance(current, (int, float)):
        kind = type(current)
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, "
                             f"got {text!r}") from None
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    return value


def apply_overrides(config, overrides: Iterable[tuple[str, str]]):
    """Sets `config.a.b = value` for each `("a.b", "value")`, typed like the field.

    Works on `ml_collections.ConfigDict` (or nested dicts). A key that does not
    exist is an error (a typo would otherwise train a different experiment).

    Returns:
        The same `config` object, modified.

    Raises:
        KeyError: unknown key (names the known keys at that level).
        ValueError: a value that does not parse as the field's type.
    """
    for key, text in overrides:
        node = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            known = sorted(node.keys()) if hasattr(node, "keys") else []
            if part not in known:
                where = ".".join(parts[:depth + 1])
                parent = ".".join(parts[:depth])
                hint = hints.did_you_mean(part, known, parent + "." if parent else "") or (
                        f"; fields here: {', '.join(known)}" if known else
                        f"; {parent} is not a group of fields")
                raise KeyError(f"--config.{key}: unknown field {where!r}{hint}")
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        try:
            value = _parse_value(text, node[leaf])
        except ValueError as e:
            raise ValueError(f"--config.{key}={text}: {e}") from None
        if hasattr(node, "unlocked"):
            with node.unlocked():
                node[leaf] = value
        else:
            node[leaf] = value
    return config


def with_fold(spec: str, fold: int) -> str:
    """`spec` with its config argument's `fold=` entry set to `fold`.

    `configs/x.py:dataset=dfew,loss=au` -> `configs/x.py:dataset=dfew,loss=au,fold=3`;
    an existing `fold=` entry is replaced.
    """
    if ".py:" in spec:
        cut = spec.index(".py:") + 3
        path, arg = spec[:cut], spec[cut + 1:]
    else:
        path, arg = spec, ""
    items = [x for x in arg.split(",") if x and not x.strip().startswith("fold=")]
    items.append(f"fold={int(fold)}")
    return f"{path}:{','.join(items)}"


def with_arg(spec: str, key: str, value: str) -> str:
    """`spec` with its config argument's `key=` entry set to `value`.

    `configs/x.py:dataset=dfew,loss=au` with `loss`, `ce` ->
    `configs/x.py:dataset=dfew,loss=ce`; a missing entry is appended.
    """
    if ".py:" in spec:
        cut = spec.index(".py:") + 3
        path, arg = spec[:cut], spec[cut + 1:]
    else:
        path, arg = spec, ""
    items = [x for x in arg.split(",") if x and x.split("=", 1)[0].strip() != key]
    items.append(f"{key}={value}")
    return f"{path}:{','.join(items)}"
