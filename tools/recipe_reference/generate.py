"""Reference fixtures for tests/test_recipe_parity.py, from the original PyTorch code.

Runs a few optimiser steps of each original training recipe (Former-DFER
`main_DFEW.py`; M3DFEL `solver.py` / `utils.build_scheduler`; MAE-DFER
`run_class_finetuning.py` with `optim_factory.py`, `utils.cosine_scheduler` and
`engine_for_finetuning.train_one_epoch`'s per-iteration lr setting), with plain
cross-entropy and with the AU-DFER loss, on weights and batches that a seeded
NumPy recipe makes (so no weight or clip is stored), and writes the per-step
numbers to tests/fixtures/recipe_parity/. Also the whole per-iteration lr
schedule of each recipe (DFEW fold 1) and MAE-DFER's Mixup/CutMix outputs.

Never imported by `audfer_jax` or by the tests. Needs torch (the project's
venv), timm 0.4.12 and torchvision (see README.md beside this file for the
install line and the torchvision shim), einops, and the three original
repositories checked out under --refs.

    python tools/recipe_reference/generate.py --refs /tmp/recipe_ref \
        --out tests/fixtures/recipe_parity [--only m3dfel] [--full]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import types

import numpy as np

import loss_cases
import optimiser_cases

# The recipes' DFEW fold 1 sizes: 9,356 training clips (`DFEW_set_1_train`),
# `drop_last` batches.
DFEW_FOLD1_TRAIN = 9356
REPOS = {  # name -> (GitHub repository, sub-folder with the code)
    "former_dfer": ("zengqunzhao/Former-DFER", ""),
    "m3dfel": ("Tencent/TFace", "attribute/M3DFEL"),
    "mae_dfer": ("sunlicai/MAE-DFER", ""),
}
AU_LAMBDA = 0.25          # AU-DFER `AU_weight`, the only value of the reference
AU_SCALE = 5.0            # `x*5` in `AU_cri_set`
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # MAE-DFER kinetics.py Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------
# The seeded NumPy recipes (tests/test_recipe_parity.py repeats them).
# ---------------------------------------------------------------------------

def recipe_array(rng: np.random.Generator, key: str, shape) -> np.ndarray:
    """One state_dict entry of the weight recipe, drawn in state_dict key order."""
    name = key.rsplit(".", 1)[-1]
    shape = tuple(int(s) for s in shape)
    if name == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    z = rng.standard_normal(shape)
    if name == "running_mean":
        v = 0.1 * z
    elif name == "running_var":
        v = 1.0 + 0.25 * np.tanh(z)
    elif len(shape) <= 1:
        v = 1.0 + 0.1 * z if name.endswith("weight") else 0.05 * z
    else:
        v = z / math.sqrt(int(np.prod(shape[1:])))
    return v.astype(np.float32)


def recipe_batches(seed: int, steps: int, batch: int, frames: int, size: int,
                   num_classes: int = 7, num_aus: int = 18):
    """`steps` batches: uint8 clips [B, T, S, S, 3] (channels last), labels, AU targets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        clips = rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, (batch,)).astype(np.int64)
        au = (rng.random((batch, num_aus)) < 0.3).astype(np.float32)
        out.append((clips, labels, au))
    return out


# ---------------------------------------------------------------------------
# Originals.
# ---------------------------------------------------------------------------

def materialise(refs: pathlib.Path, mirrors: pathlib.Path | None) -> dict[str, dict]:
    """Checks out (or finds) the originals under `refs`; returns their commits."""
    info = {}
    for name, (repo, sub) in REPOS.items():
        dest = refs / name
        commit = None
        if not dest.exists():
            if mirrors is None:
                raise SystemExit(f"{dest} missing: clone {repo} there or pass --mirrors")
            git_dir = mirrors / (repo.replace("/", "+")) / "repo"
            dest.mkdir(parents=True)
            # Only the Python sources of the sub-folder: the mirrors may lack a
            # repository's large files (weights, figures).
            files = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r",
                                    "--name-only", "HEAD"] + ([sub] if sub else []),
                                   check=True, capture_output=True, text=True).stdout.split()
            archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD", "--"]
                                     + [f for f in files if f.endswith(".py")],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
            commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"],
                                    check=True, capture_output=True, text=True).stdout.strip()
            (dest / ".commit").write_text(commit)
        elif (dest / ".commit").exists():
            commit = (dest / ".commit").read_text().strip()
        info[name] = {"repository": repo, "commit": commit, "path": str(dest / sub),
                      "folder": sub or "."}
    return info


def shim_torchvision():
    """Imports torchvision's model code without its compiled ops.

    The PyPI torchvision wheel matching torch 2.13 is the CUDA build, whose
    `_C` extension does not load against the CPU torch; `torchvision/__init__`
    and `torchvision/models/__init__` then fail. Registering both packages as
    plain namespace stubs lets `torchvision.models.video.resnet` (R3D-18) and
    `torchvision.transforms` (imported by timm 0.4.12) load unchanged.
    """
    import importlib.util
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit("torchvision is not importable (see README.md)")
    root = pathlib.Path(spec.submodule_search_locations[0])
    for name, path in (("torchvision", root), ("torchvision.models", root / "models")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod


@contextlib.contextmanager
def on_path(path: str, purge: tuple[str, ...] = ()):
    """`path` first on sys.path; forgets the originals' top-level modules after."""
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)
        for m in list(sys.modules):
            if m.split(".")[0] in purge:
                del sys.modules[m]


def load_function(path: str, name: str, namespace: dict):
    """One top-level function of a source file, without importing the file.

    MAE-DFER's utils.py imports `torch._six` (removed from torch) and
    tensorboardX at module level; `cosine_scheduler` needs only np and math.
    """
    tree = ast.parse(pathlib.Path(path).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    code = compile(ast.Module(body=[fn], type_ignores=[]), path, "exec")
    ns = dict(namespace)
    exec(code, ns)  # pylint: disable=exec-used
    return ns[name]


# ---------------------------------------------------------------------------
# The AU-DFER loss as the reference adds it (M3DFEL_AU/solver_with_AU_weighted.py
# AU_cri_set, Former-DFER_AU main_DFEW.py): BCEWithLogitsLoss(weight=5 W[y],
# pos_weight=P_global), total (1 - 0.25) CE + 0.25 L_AU.
# ---------------------------------------------------------------------------

def au_constants(path: str):
    d = json.loads(pathlib.Path(path).read_text())
    classes = d["class_order"]
    prior = np.array([d["prior"]["dfew"]["values"][c] for c in classes], np.float64)
    pos = np.array(d["pos_weight"]["dfew"]["global"], np.float64)
    return prior, pos


def au_loss(torch, au_logits, au_targets, labels, prior, pos):
    # Corrected row choice: the reference takes `line.argmax()` of each scalar
    # label, which is always 0 (the happy row); au_dfer_method.md section 2 and
    # this library index W by the label. See the fixture README.
    dtype = au_logits.dtype     # float32; float64 with --float64
    weight = torch.tensor(AU_SCALE * prior[labels.numpy()], dtype=dtype)
    crit = torch.nn.BCEWithLogitsLoss(weight=weight, pos_weight=torch.tensor(pos, dtype=dtype))
    return crit(au_logits, au_targets.to(dtype))


# ---------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------

class FeatureTap:
    """Records the input of the classifier (the pooled feature) for the AU head."""

    def __init__(self, module):
        self.value = None
        module.register_forward_pre_hook(self._hook)

    def _hook(self, _, args):
        self.value = args[0]


def build_former_dfer(torch, code: str):
    with on_path(code, purge=("models", "dataloader")):
        from models.ST_Former import GenerateModel  # pylint: disable=import-outside-toplevel
        model = GenerateModel()
    # AU-DFER's Former-DFER_AU adds `AU_fc` 512 -> 18 on the T-Former output.
    model.AU_fc = torch.nn.Linear(512, 18)
    return model, FeatureTap(model.fc), model.AU_fc


def build_m3dfel(torch, code: str, image_size: int):
    import torchvision.models.video as tv_video  # pylint: disable=import-outside-toplevel
    real = tv_video.r3d_18
    # M3DFEL asks for the Kinetics-400 weights (a download); every weight is
    # overwritten by the recipe, so build the same architecture without them.
    tv_video.r3d_18 = lambda weights=None, **kw: real(weights=None, **kw)
    try:
        with on_path(code, purge=("models", "utils", "datasets")):
            m3 = importlib.import_module("models.M3DFEL")
            args = argparse.Namespace(gpu_ids=[], num_frames=16, instance_length=4,
                                      num_classes=7, crop_size=image_size)
            model = m3.M3DFEL(args)
    finally:
        tv_video.r3d_18 = real
    # AU-DFER's M3DFEL_with_AU_weighted adds `fc_au` 1024 -> 18 beside `fc`.
    model.fc_au = torch.nn.Linear(1024, 18)
    return model, FeatureTap(model.fc), model.fc_au


def build_mae_dfer(torch, code: str, depth: int):
    with on_path(code, purge=("modeling_finetune", "optim_factory", "modeling_pretrain")):
        mf = importlib.import_module("modeling_finetune")
        # The DFEW script's constructor (backbones.md section 3), dropout and
        # drop-path 0 for a deterministic run.
        model = mf.vit_base_dim512_no_depth_patch16_160(
                num_classes=7, all_frames=16, tubelet_size=2, drop_rate=0.0,
                drop_path_rate=0.0, attn_drop_rate=0.0,
                use_mean_pooling=True, init_scale=0.001, depth=depth,
                attn_type="local_global", lg_region_size=(2, 5, 10),
                lg_first_attn_type="self", lg_third_attn_type="cross",
                lg_attn_param_sharing_first_third=False, lg_attn_param_sharing_all=False,
                lg_classify_token_type="region", lg_no_second=False, lg_no_third=False)
    # The AU-DFER MAE-DFER model code is unpublished; a Linear 512 -> 18 on
    # the fc_norm output (what `head` sees), as the spec says.
    model.fc_au = torch.nn.Linear(512, 18)
    return model, FeatureTap(model.head), model.fc_au


def to_torch_clips(torch, clips: np.ndarray, recipe: str):
    x = torch.from_numpy(clips.astype(np.float32) / 255.0)    # [B, T, H, W, 3]
    if recipe == "mae_dfer":
        x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        return x.permute(0, 4, 1, 2, 3).contiguous()          # [B, 3, T, H, W]
    return x.permute(0, 1, 4, 2, 3).contiguous()              # [B, T, 3, H, W]


# ---------------------------------------------------------------------------
# Optimisers and schedules, as each recipe builds them.
# ---------------------------------------------------------------------------

def steps_per_epoch(recipe: str) -> int:
    return DFEW_FOLD1_TRAIN // {"former_dfer": 32, "m3dfel": 256, "mae_dfer": 96}[recipe]


class FormerDferSchedule:
    """main_DFEW.py: SGD(lr 0.01, momentum 0.9, wd 1e-4); StepLR(40, 0.1) per epoch.

    `lr_scale` multiplies the lr (the training cases' stable regime, see CASES).
    """

    epochs = 100

    def __init__(self, torch, model, refs, lr_scale: float = 1.0):
        del refs
        self.opt = torch.optim.SGD(model.parameters(), 0.01 * lr_scale, momentum=0.9,
                                   weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=40, gamma=0.1)
        self.spe = steps_per_epoch("former_dfer")

    def place(self, t0: int):
        for _ in range(t0 // self.spe):     # the epoch ends before t0
            self.sched.step()

    def before_step(self, it: int):
        del it

    def after_step(self, it: int):
        if (it + 1) % self.spe == 0:        # end of epoch: scheduler.step()
            self.sched.step()


class M3dfelSchedule:
    """solver.py: AdamW(lr 5e-4, eps 1e-8, wd 0.05); utils.build_scheduler, step_update(it)."""

    epochs = 300

    def __init__(self, torch, model, refs):
        self.opt = torch.optim.AdamW(model.parameters(), lr=5e-4, eps=1e-8, weight_decay=0.05)
        code = refs["m3dfel"]["path"]
        with on_path(code, purge=("utils", "models", "datasets")):
            utils = importlib.import_module("utils")
            args = argparse.Namespace(epochs=300, warmup_epochs=20, min_lr=5e-6, warmup_lr=0)
            self.sched = utils.build_scheduler(args, self.opt, steps_per_epoch("m3dfel"))

    def place(self, t0: int):
        if t0 > 0:
            self.sched.step_update(t0 - 1)

    def before_step(self, it: int):
        del it

    def after_step(self, it: int):
        self.sched.step_update(it)


class MaeDferSchedule:
    """run_class_finetuning.py: timm create_optimizer('adamw') over optim_factory's
    layer-decay groups; lr per iteration from utils.cosine_scheduler, set per group
    as `lr_schedule_values[it] * lr_scale` before each step (engine_for_finetuning)."""

    epochs = 100
    batch = 96   # 3 GPUs x 32

    def __init__(self, torch, model, refs):
        code = refs["mae_dfer"]["path"]
        lr = 1e-3 * self.batch / 256
        min_lr = 1e-6 * self.batch / 256
        with on_path(code, purge=("optim_factory",)):
            of = importlib.import_module("optim_factory")
            num_layers = model.get_num_layers()
            assigner = of.LayerDecayValueAssigner(
                    list(0.75 ** (num_layers + 1 - i) for i in range(num_layers + 2)))
            args = argparse.Namespace(opt="adamw", lr=lr, weight_decay=0.05, opt_eps=1e-8,
                                      opt_betas=[0.9, 0.999], momentum=0.9)
            self.opt = of.create_optimizer(args, model, skip_list=model.no_weight_decay(),
                                           get_num_layer=assigner.get_layer_id,
                                           get_layer_scale=assigner.get_scale)
        cosine = load_function(os.path.join(code, "utils.py"), "cosine_scheduler",
                               {"np": np, "math": math})
        self.values = cosine(lr, min_lr, self.epochs, steps_per_epoch("mae_dfer"),
                             warmup_epochs=5, warmup_steps=-1)

    def place(self, t0: int):
        del t0

    def before_step(self, it: int):
        for group in self.opt.param_groups:
            group["lr"] = self.values[it] * group["lr_scale"]

    def after_step(self, it: int):
        del it


SCHEDULES = {"former_dfer": FormerDferSchedule, "m3dfel": M3dfelSchedule,
             "mae_dfer": MaeDferSchedule}


# ---------------------------------------------------------------------------
# One case: K steps of the original loop from iteration t0.
# ---------------------------------------------------------------------------

def run_case(torch, refs, prior, pos, case: dict,
             float64: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    recipe = case["recipe"]
    model, tap, au_head = build_model(torch, refs, case)
    sd = model.state_dict()
    rng = np.random.default_rng(case["weight_seed"])
    keys = []
    new_sd = {}
    for key, value in sd.items():
        arr = recipe_array(rng, key, value.shape)
        new_sd[key] = torch.from_numpy(arr)
        keys.append([key, list(value.shape), str(value.dtype).replace("torch.", "")])
    model.load_state_dict(new_sd)
    if float64:
        # The same run in float64 (--float64): how far the original's own
        # float32 trajectory is from exact arithmetic (fixture README).
        model.double()
    model.train()

    # Only the recipe's loss differs between the CE and AU variants.
    smoothing = {"former_dfer": 0.0, "m3dfel": 0.1, "mae_dfer": 0.1}[recipe]
    ce_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    scale = {"lr_scale": case["lr_scale"]} if "lr_scale" in case else {}
    sched = SCHEDULES[recipe](torch, model, refs, **scale)
    opt = sched.opt
    # Parameter groups by state_dict key (named_parameters shares the names).
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{"params": [names[id(p)] for p in g["params"]],
               "weight_decay": float(g["weight_decay"])} for g in opt.param_groups]
    sched.place(case["t0"])

    batches = recipe_batches(case["batch_seed"], case["steps"], case["batch"], 16,
                             case["image_size"])
    per_step = {"loss": [], "ce": [], "au_bce": [], "grad_norm": [], "lr": []}
    no_grad = set()
    for k, (clips, labels, au) in enumerate(batches):
        it = case["t0"] + k
        sched.before_step(it)
        per_step["lr"].append([float(g["lr"]) for g in opt.param_groups])
        x = to_torch_clips(torch, clips, recipe)
        x = x.double() if float64 else x
        y = torch.from_numpy(labels)
        logits = model(x)
        au_logits = au_head(tap.value)
        ce = ce_fn(logits, y)
        au_term = au_loss(torch, au_logits, torch.from_numpy(au), y, prior, pos)
        loss = ce if case["loss"] == "ce" else (1 - AU_LAMBDA) * ce + AU_LAMBDA * au_term
        opt.zero_grad()
        loss.backward()
        sq = 0.0
        for n, p in model.named_parameters():
            if p.grad is None:
                no_grad.add(n)
            else:
                sq += float(torch.sum(p.grad.double() ** 2))
        opt.step()
        sched.after_step(it)
        per_step["loss"].append(loss.item())
        per_step["ce"].append(ce.item())
        per_step["au_bce"].append(au_term.item())
        per_step["grad_norm"].append(math.sqrt(sq))

    final = model.state_dict()
    out = dict(case)
    out["objective"] = out.pop("loss")      # 'ce' or 'au'; "loss" is the per-step list
    out.update(per_step)
    out["state_dict"] = keys
    out["groups"] = groups
    out["no_grad"] = sorted(no_grad)
    out["param_norm"] = {n: float(torch.linalg.vector_norm(p.detach().double()))
                         for n, p in model.named_parameters()}
    arrays = {k: v.numpy().astype(np.float32) for k, v in final.items()
              if k.endswith("running_mean") or k.endswith("running_var")}
    return out, arrays


# Schedule points (DFEW fold 1): Former-DFER 292 it/epoch (StepLR boundary at
# 40 * 292 = 11680), M3DFEL 36 it/epoch (warmup 720, run 10800), MAE-DFER 97
# it/epoch (warmup 485, run 9700).
#
# Former-DFER's cases run at 1/100 of the recipe's lr (`lr_scale`; the test
# scales our config's lr the same): at lr 0.01 the seeded weights train far
# from a stable regime (loss 4.5 -> 18 -> 74) and the float32 step-0 gradient
# of layers 1-3, only good to ~3e-3 in the original's own float32 run, makes
# the later steps differ by up to 5e-2 between float32 and float64; at 1e-4
# they stay within 5e-4 (fixture README). The optimiser-only cases
# (optimiser_cases.py) hold the recipe's own lr.
CASES = [
    # name, recipe, loss, t0, steps, extra
    dict(name="former_dfer_ce_start", recipe="former_dfer", loss="ce", t0=0, steps=4,
         lr_scale=0.001),
    dict(name="former_dfer_au_steplr40", recipe="former_dfer", loss="au", t0=40 * 292 - 2,
         steps=4, lr_scale=0.001),
    dict(name="m3dfel_ce_start", recipe="m3dfel", loss="ce", t0=0, steps=5, image_size=32),
    dict(name="m3dfel_au_warmup_end", recipe="m3dfel", loss="au", t0=20 * 36 - 2, steps=4,
         image_size=32),
    dict(name="m3dfel_au_cosine_mid", recipe="m3dfel", loss="au", t0=150 * 36, steps=4,
         image_size=32),
    dict(name="mae_dfer_ce_start", recipe="mae_dfer", loss="ce", t0=0, steps=4, depth=2),
    dict(name="mae_dfer_au_warmup", recipe="mae_dfer", loss="au", t0=5 * 97 - 2, steps=4,
         depth=2),
    dict(name="mae_dfer_au_cosine_mid", recipe="mae_dfer", loss="au", t0=5 * 97 + 4600,
         steps=4, depth=2),
]
FULL_CASES = [
    dict(name="m3dfel_au_full", recipe="m3dfel", loss="au", t0=0, steps=4, image_size=112),
    dict(name="mae_dfer_au_full", recipe="mae_dfer", loss="au", t0=5 * 97 - 2, steps=4,
         depth=16),
]
DEFAULTS = {"former_dfer": dict(image_size=112, batch=2),
            "m3dfel": dict(batch=2),
            "mae_dfer": dict(image_size=160, batch=2)}


def full_schedules(torch, refs) -> dict[str, np.ndarray]:
    """The lr every optimiser step of each whole recipe runs at (DFEW fold 1)."""
    out = {}
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    # Former-DFER: one value per epoch (StepLR), stepped at each epoch end.
    opt = torch.optim.SGD(dummy, 0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.1)
    per_epoch = []
    for _ in range(FormerDferSchedule.epochs):
        per_epoch.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out["former_dfer_per_epoch"] = np.array(per_epoch, np.float64)
    # M3DFEL: the lr of optimiser step it is the value left by step_update(it - 1).
    opt = torch.optim.AdamW(dummy, lr=5e-4, eps=1e-8, weight_decay=0.05)
    with on_path(refs["m3dfel"]["path"], purge=("utils", "models", "datasets")):
        utils = importlib.import_module("utils")
        sched = utils.build_scheduler(argparse.Namespace(epochs=300, warmup_epochs=20,
                                                         min_lr=5e-6, warmup_lr=0),
                                      opt, steps_per_epoch("m3dfel"))
    values = []
    for it in range(300 * steps_per_epoch("m3dfel")):
        values.append(opt.param_groups[0]["lr"])
        sched.step_update(it)
    out["m3dfel"] = np.array(values, np.float64)
    code = refs["mae_dfer"]["path"]
    cosine = load_function(os.path.join(code, "utils.py"), "cosine_scheduler",
                           {"np": np, "math": math})
    out["mae_dfer"] = np.asarray(cosine(1e-3 * 96 / 256, 1e-6 * 96 / 256, 100,
                                        steps_per_epoch("mae_dfer"), warmup_epochs=5,
                                        warmup_steps=-1), np.float64)
    return out


def mixup_clips(seed: int) -> np.ndarray:
    """The seeded clips of mixup case `seed`: `[B, C, T, H, W]` float32 in [0, 1]."""
    return np.random.default_rng(100 + seed).random((4, 3, 2, 10, 10)).astype(np.float32)


def mixup_cases(torch, refs) -> tuple[dict, dict[str, np.ndarray]]:
    """MAE-DFER's Mixup('batch', mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1)
    on seeded clips [B, 3, T, H, W] in [0, 1]; records each draw (lam, whether
    CutMix, the box centre) and the outputs. Checks that timm 0.4.12's Mixup,
    which MAE-DFER's mixup.py copies, draws the same (its CutMix paste is for
    images only, see below)."""
    kwargs = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                  mode="batch", label_smoothing=0.1, num_classes=7)
    with on_path(refs["mae_dfer"]["path"], purge=("mixup",)):
        mx = importlib.import_module("mixup")
    from timm.data import mixup as timm_mixup  # pylint: disable=import-outside-toplevel
    real_randint = np.random.randint
    centres: list[int] = []

    def randint(*args, **kw):   # rand_bbox's two draws: cy, then cx
        v = real_randint(*args, **kw)
        centres.append(int(v))
        return v

    meta, arrays = [], {}
    for seed in range(8):
        clips = mixup_clips(seed)
        labels = torch.from_numpy(np.random.default_rng(200 + seed).integers(0, 7, (4,)))
        np.random.seed(seed)
        lam_drawn, use_cutmix = mx.Mixup(**kwargs)._params_per_batch()  # pylint: disable=protected-access
        outs = []
        for impl in (mx, timm_mixup):
            np.random.seed(seed)
            centres.clear()
            np.random.randint = randint
            try:
                x = torch.from_numpy(clips.copy())
                lam = impl.Mixup(**kwargs)._mix_batch(x)  # pylint: disable=protected-access
            finally:
                np.random.randint = real_randint
            # timm 0.4.12's mixup_target defaults to device 'cuda'.
            y = impl.mixup_target(labels, 7, lam, 0.1, device="cpu")
            outs.append((x.numpy(), y.numpy(), float(lam), list(centres)))
        (x0, y0, lam0, c0), (x1, y1, lam1, _) = outs
        # timm 0.4.12 pastes the CutMix box with x[:, :, yl:yh, xl:xh], which on
        # a [B, C, T, H, W] clip cuts frames and rows; MAE-DFER's copy uses
        # x[..., yl:yh, xl:xh] (rows and columns of every frame). The draws,
        # lam and targets are the same; the clips too for Mixup draws.
        same_clips = use_cutmix or np.array_equal(x0, x1)
        if not (same_clips and np.array_equal(y0, y1) and lam0 == lam1):
            raise SystemExit("MAE-DFER's mixup.py and timm 0.4.12 Mixup disagree")
        meta.append({"seed": seed, "lam_drawn": float(lam_drawn),
                     "use_cutmix": bool(use_cutmix), "lam": lam0,
                     "centre": c0 if use_cutmix else None,
                     "labels": labels.tolist()})
        arrays[f"case{seed}_mixed"] = x0
        arrays[f"case{seed}_targets"] = y0.astype(np.float32)
    return {"cases": meta}, arrays


def build_model(torch, refs, case: dict):
    """The case's original model with the AU head: `(model, feature tap, AU head)`."""
    recipe = case["recipe"]
    torch.manual_seed(0)
    if recipe == "former_dfer":
        return build_former_dfer(torch, refs[recipe]["path"])
    if recipe == "m3dfel":
        return build_m3dfel(torch, refs[recipe]["path"], case["image_size"])
    return build_mae_dfer(torch, refs[recipe]["path"], case["depth"])


def write_optim_cases(torch, refs, out: pathlib.Path, only: set, versions: dict):
    """`<name>.json` and `<name>.npz` of each optimiser-only case (optimiser_cases.py)."""
    for case in optimiser_cases.OPTIM_CASES:
        if only and case["name"] not in only and case["recipe"] not in only:
            continue
        t = time.time()
        case = {**case, "seed": optimiser_cases.OPTIM_SEED}
        model, _, _ = build_model(torch, refs, case)
        model.train()
        sched = SCHEDULES[case["recipe"]](torch, model, refs)
        meta, arrays = optimiser_cases.run(torch, model, sched, case)
        meta = {**case, **meta, "generated_with": versions}
        (out / f"{case['name']}.json").write_text(json.dumps(meta) + "\n")
        np.savez_compressed(out / f"{case['name']}.npz", **arrays)
        print(f"{case['name']}: {time.time() - t:.1f} s", flush=True)


def write_extras(torch, refs, out: pathlib.Path, which: set, versions: dict, prior, pos):
    """The whole schedules, the Mixup cases and the loss-only cases (loss_cases.py)."""
    if "losses" in which:
        losses = loss_cases.run(torch, au_loss, prior, pos, AU_LAMBDA)
        losses["generated_with"] = versions
        (out / "losses.json").write_text(json.dumps(losses, indent=1) + "\n")
    if "schedules" in which:
        np.savez_compressed(out / "schedules.npz", **full_schedules(torch, refs))
    if "mixup" in which:
        meta, arrays = mixup_cases(torch, refs)
        meta["generated_with"] = versions
        (out / "mixup.json").write_text(json.dumps(meta, indent=1) + "\n")
        np.savez_compressed(out / "mixup.npz", **arrays)
    print(f"extras written: {sorted(which)}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--refs", required=True, type=pathlib.Path,
                   help="folder holding (or to receive) former_dfer/, m3dfel/, mae_dfer/")
    p.add_argument("--mirrors", type=pathlib.Path, default=None,
                   help="folder of bare git mirrors <owner>+<name>/repo to check out from")
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--au-prior", default=str(pathlib.Path(__file__).resolve().parents[2]
                                             / "audfer_jax" / "au_data" / "au_prior.json"))
    p.add_argument("--only", default="", help="comma-separated case names or recipes")
    p.add_argument("--full", action="store_true", help="also the full-size (slow) cases")
    p.add_argument("--skip-extras", action="store_true",
                   help="none of the extras (schedules, mixup, losses)")
    p.add_argument("--extras", default="schedules,mixup,losses",
                   help="which extras to write: schedules.npz, mixup.json/npz, losses.json")
    p.add_argument("--skip-optim", action="store_true",
                   help="no optimiser-only cases (optimiser_cases.py)")
    p.add_argument("--float64", action="store_true",
                   help="run the cases in float64 and write <case>.float64.json (not fixtures: "
                        "the original's float32 rounding, see the fixture README)")
    a = p.parse_args(argv)

    shim_torchvision()
    import torch  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    refs = materialise(a.refs, a.mirrors)
    prior, pos = au_constants(a.au_prior)
    a.out.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, a.only.split(",")))
    versions = {"torch": torch.__version__, "timm": timm.__version__,
                "numpy": np.__version__,
                "originals": {k: {f: v[f] for f in ("repository", "commit", "folder")}
                              for k, v in refs.items()}}
    cases = CASES + (FULL_CASES if a.full else [])
    for case in cases:
        if only and case["name"] not in only and case["recipe"] not in only:
            continue
        case = {**DEFAULTS[case["recipe"]], **case, "weight_seed": 1, "batch_seed": 2}
        case.setdefault("depth", None)
        t = time.time()
        out, arrays = run_case(torch, refs, prior, pos, case, float64=a.float64)
        out["generated_with"] = versions
        if a.float64:
            out["float64"] = True
            (a.out / f"{case['name']}.float64.json").write_text(json.dumps(out, indent=1) + "\n")
            if arrays:
                np.savez_compressed(a.out / f"{case['name']}.float64_bn.npz", **arrays)
            print(f"{case['name']} (float64): {time.time() - t:.1f} s, loss {out['loss']}",
                  flush=True)
            continue
        # The full-size cases on one line: MAE-DFER's 521 tensors make 95 kB indented.
        indent = None if case["name"].endswith("_full") else 1
        (a.out / f"{case['name']}.json").write_text(json.dumps(out, indent=indent) + "\n")
        np.savez_compressed(a.out / f"{case['name']}_bn.npz", **arrays) if arrays else None
        print(f"{case['name']}: {time.time() - t:.1f} s, loss {out['loss']}", flush=True)
    if not (a.skip_optim or a.float64):
        write_optim_cases(torch, refs, a.out, only, versions)
    if not (a.skip_extras or a.float64):
        write_extras(torch, refs, a.out, set(a.extras.split(",")), versions, prior, pos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
