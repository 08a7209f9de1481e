"""Optimiser-only reference cases: each original optimiser and scheduler on seeded
gradients (issue 30, item 1).

The training cases of `generate.py` compare whole steps, where the model's
float32 rounding hides small recipe changes. Here each recipe's ORIGINAL
optimiser and scheduler (`torch.optim.SGD` + `StepLR` of Former-DFER,
`torch.optim.AdamW` + timm `CosineLRScheduler` of M3DFEL, MAE-DFER's
`optim_factory.create_optimizer` with the layer-decay groups +
`utils.cosine_scheduler`) is stepped K times on the real model's parameters
(full size: every tensor at its real shape) with gradients that a seeded NumPy
recipe makes (`optim_arrays`, repeated by tests/test_recipe_parity.py), and
records per step and per parameter tensor the L2 norms of the update, the
optimiser state (SGD's momentum buffer; AdamW's first and second moments) and
the parameter after the step, and every group's lr. Numbers only.

The gradients are built so that every constant of the recipes moves these
numbers well above float32 rounding: each tensor gets a power-of-two scale
from 1 down to 2**-30, and its elements span further decades (a product of
uniform draws), so some tensors' gradients are far below `wd * |p|` (SGD's
coupled decay shows) and some elements are near AdamW's eps = 1e-8.
"""

from __future__ import annotations

import math

import numpy as np

OPTIM_SEED = 30
# Where each recipe's optimiser starts (DFEW fold 1 iterations): Former-DFER
# across the epoch-40 StepLR boundary (0.01, 0.01, 1e-3, 1e-3), M3DFEL at the
# end of its warmup, MAE-DFER at the end of its warmup (cosine from step 2).
OPTIM_CASES = [
    dict(name="former_dfer_optim", recipe="former_dfer", t0=40 * 292 - 2, steps=4),
    dict(name="m3dfel_optim", recipe="m3dfel", t0=20 * 36 - 2, steps=4, image_size=112),
    dict(name="mae_dfer_optim", recipe="mae_dfer", t0=5 * 97 - 2, steps=4, depth=16),
]


# ---------------------------------------------------------------------------
# The seeded NumPy recipe (tests/test_recipe_parity.py repeats it). Only
# float32 +, -, * and exact power-of-two scales: the same bits on any machine.
# ---------------------------------------------------------------------------

def optim_base(rng: np.random.Generator, shape) -> np.ndarray:
    """The tensor's one uniform draw in [0, 1), float32, shape `shape`."""
    return rng.random(tuple(int(s) for s in shape), dtype=np.float32)


def optim_param(key: str, base: np.ndarray) -> np.ndarray:
    """The tensor's starting value: uniform, fan-in scaled (>= 2-D), around 1
    (1-D `weight`) or around 0 (other 1-D tensors)."""
    half = base - np.float32(0.5)
    if base.ndim >= 2:
        return half * np.float32(2.0 / math.sqrt(int(np.prod(base.shape[1:]))))
    if key.endswith("weight"):
        return np.float32(1.0) + np.float32(0.2) * half
    return np.float32(0.1) * half


def optim_grad(index: int, base: np.ndarray, step: int) -> np.ndarray:
    """Gradient of tensor `index` (state_dict order among parameters) at step `step`.

    `scale * (roll(base) - 1/2) * base**2`: the sign and size vary per step (the
    rolled draw), the size also per element over decades (`base**2`), and the
    tensor's scale is `2**-e` with e = 7 index mod 31 (+1 on odd steps for odd
    tensors), from 1 down to 2**-31.
    """
    flat = base.reshape(-1)
    shift = (1 + 7919 * step) % max(flat.size, 1)
    other = np.roll(flat, shift).reshape(base.shape)
    e = (7 * index) % 31 + (step % 2) * (index % 2)
    return (np.float32(2.0 ** -e) * (other - np.float32(0.5))) * (base * base)


# ---------------------------------------------------------------------------
# The original's optimiser on those gradients.
# ---------------------------------------------------------------------------

def seed_parameters(torch, model, seed: int = OPTIM_SEED):
    """Sets every parameter from the recipe; returns `(keys, bases)`.

    `keys`: `[key, shape, is_parameter]` for every state_dict entry (buffers
    too: the test's converter wants the whole state_dict, buffers as zeros);
    `bases`: `{key: base draw}` of the parameters, drawn in state_dict order.
    """
    params = dict(model.named_parameters())
    rng = np.random.default_rng(seed)
    keys, bases = [], {}
    for key, value in model.state_dict().items():
        keys.append([key, list(value.shape), key in params])
        if key in params:
            bases[key] = optim_base(rng, value.shape)
            with torch.no_grad():
                params[key].copy_(torch.from_numpy(optim_param(key, bases[key])))
    return keys, bases


def intended_update(torch, opt, group, p, p_old) -> np.ndarray:
    """The step the optimiser meant to apply to `p`, float64 from its float32 state.

    The parameter's own change `p - p_old` holds float32 rounding of `p`, which
    for tensors with tiny gradients is a large part of the step; this is the
    exact value of what was added. SGD: `-lr buf`; AdamW (torch `_single_tensor_adam`,
    bias corrections in float64): `-lr wd p_old - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`.
    """
    state = opt.state[p]
    lr = float(group["lr"])
    if "momentum_buffer" in state:
        return -lr * state["momentum_buffer"].double()
    b1, b2 = group["betas"]
    t = float(state["step"])
    m, v = state["exp_avg"].double(), state["exp_avg_sq"].double()
    adam = (m / (1.0 - b1 ** t)) / (v.sqrt() / math.sqrt(1.0 - b2 ** t) + group["eps"])
    return -lr * float(group["weight_decay"]) * p_old.double() - lr * adam


def run(torch, model, sched, case: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """K steps of `sched.opt` (placed at `case['t0']`) on the recipe's gradients.

    Returns `(meta, arrays)`: meta has `keys` (`[key, shape, is_parameter,
    group index]`), `weight_decay` and `lr` `[K][group]` of the groups; arrays `update`,
    `moment1`, `moment2` (AdamW only) and `param`, each `[K, P]` float64 L2
    norms in the order of the parameters of `keys`.
    """
    keys, bases = seed_parameters(torch, model, int(case.get("seed", OPTIM_SEED)))
    opt = sched.opt
    names = {id(p): n for n, p in model.named_parameters()}
    group_of = {names[id(p)]: g for g in opt.param_groups for p in g["params"]}
    order = [k for k, _, is_param in keys if is_param]
    params = dict(model.named_parameters())
    sched.place(case["t0"])
    out = {q: [] for q in ("update", "moment1", "moment2", "param")}
    lrs = []
    for k in range(case["steps"]):
        it = case["t0"] + k
        sched.before_step(it)
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        old = {}
        for i, key in enumerate(order):
            params[key].grad = torch.from_numpy(optim_grad(i, bases[key], k))
            old[key] = params[key].detach().clone()
        opt.step()
        norm = lambda t: float(torch.linalg.vector_norm(t.double()))  # noqa: E731
        rows = {q: [] for q in out}
        for key in order:
            p, state = params[key], opt.state[params[key]]
            rows["update"].append(norm(intended_update(torch, opt, group_of[key], p, old[key])))
            rows["param"].append(norm(p.detach()))
            first = state.get("momentum_buffer", state.get("exp_avg"))
            rows["moment1"].append(norm(first))
            rows["moment2"].append(norm(state["exp_avg_sq"]) if "exp_avg_sq" in state else 0.0)
        for q in out:
            out[q].append(rows[q])
        # After the records: the update above is the one made at this step's lr.
        sched.after_step(it)
    index = {id(g): i for i, g in enumerate(opt.param_groups)}
    meta = {"keys": [k + [index[id(group_of[k[0]])] if k[2] else None] for k in keys],
            "lr": lrs, "weight_decay": [float(g["weight_decay"]) for g in opt.param_groups]}
    arrays = {q: np.asarray(v, np.float64) for q, v in out.items()
              if q != "moment2" or any(any(r) for r in v)}
    return meta, arrays
