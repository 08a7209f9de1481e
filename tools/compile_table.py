"""The pod-readiness table of docs/performance.md: `audfer-jax compile` per cell.

    python tools/compile_table.py --out docs/compile_table [--only mae_dfer] [--cells A,B]
        [--shard K/N] [--render]

For each backbone (recipe config, DFEW fold 1, AU loss), dtype, remat setting
and TPU generation (a 4-chip slice: v5e:2x2, v5p:2x2x1, v6e:2x2), runs

    audfer-jax compile --config configs/<backbone>.py:dataset=dfew,fold=1 \\
        --topology <slice> --max-batch --no-eval --config.dtype=D \\
        --config.remat_policy=R --json <out>/<cell>.json

(the search compiles per-chip batch 1 and the recipe's per-chip batch first,
so the HBM at the recipe's batch is one of its compiles), one cell at a time,
skipping cells whose JSON exists, in the order MAE-DFER (remat `none`, both
dtypes, then `full`), then bfloat16 of Former-DFER and M3DFEL, then their
float32 cells. `--shard K/N` takes every N-th cell from the K-th (0-based), so
that N processes can share the cells; `--render` prints the Markdown table of
the cells done so far.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RECIPES = {"mae_dfer": 96, "former_dfer": 32, "m3dfel": 256}
NAMES = {"mae_dfer": "MAE-DFER", "former_dfer": "Former-DFER", "m3dfel": "M3DFEL"}
POLICIES = ("none", "full")       # config.remat_policy
SLICES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# Slice sizes in chips, smallest first, up to 256: v5e and v6e also come as
# single-chip slices (v5litepod-1, v6e-1); a v5p slice has at least 4 chips
# (v5p-8). A 1-chip slice is judged by the 4-chip slice's per-chip figures
# (it has no gradient all-reduce, so it should need no more; not compiled).
SIZES = {"v5e": (1, 4, 8, 16, 32, 64, 128, 256), "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
         "v5p": (4, 8, 16, 32, 64, 128, 256)}


def cells():
    order = []
    for remat in POLICIES:
        for dtype in ("bfloat16", "float32"):
            for gen in SLICES:
                order.append(("mae_dfer", dtype, remat, gen))
    for dtype in ("bfloat16", "float32"):
        for remat in POLICIES:
            for gen in SLICES:
                for model in ("former_dfer", "m3dfel"):
                    order.append((model, dtype, remat, gen))
    return order


def cell_name(model, dtype, remat, gen):
    return f"{model}_{dtype}_remat-{remat}_{gen}"


def run_cell(out_dir, model, dtype, remat, gen):
    path = os.path.join(out_dir, cell_name(model, dtype, remat, gen) + ".json")
    if os.path.exists(path):
        return
    cmd = [sys.executable, "-m", "audfer_jax", "compile",
           "--config", f"configs/{model}.py:dataset=dfew,fold=1", "--topology", SLICES[gen],
           "--max-batch", "--no-eval", f"--config.dtype={dtype}",
           f"--config.remat_policy={remat}",
           "--json", path + ".tmp"]
    t0 = time.time()
    # The log is written as the search goes, so that the sizes compiled so far
    # are on disk if the cell is stopped before it ends.
    log = os.path.join(out_dir, cell_name(model, dtype, remat, gen) + ".log")
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if os.path.exists(path + ".tmp"):
        os.replace(path + ".tmp", path)
    print(f"{cell_name(model, dtype, remat, gen)}: exit {proc.returncode} in "
          f"{time.time() - t0:.0f} s", flush=True)


def _chips(n):
    return f"{n} chip" if n == 1 else f"{n} chips"


def smallest_slice(recipe, per_chip_max, gen):
    for chips in SIZES[gen]:
        if recipe % chips == 0 and recipe // chips <= per_chip_max:
            return chips
    return None


def render(out_dir):
    rows = ["| backbone | dtype | remat | chip | HBM/chip at recipe batch (per-chip) | "
            "largest per-chip batch (predicted by first fit) | compile s (one step) | "
            "GFLOPs/clip | recipe batch fits from |",
            "|---|---|---|---|---|---|---|---|---|"]
    missing = []
    for model, dtype, remat, gen in cells():
        path = os.path.join(out_dir, cell_name(model, dtype, remat, gen) + ".json")
        if not os.path.exists(path):
            missing.append(f"{NAMES[model]} {dtype} remat {remat} {gen}")
            continue
        r = json.load(open(path, encoding="utf-8"))
        recipe = RECIPES[model]
        hint = r.get("hint_per_chip")
        at_recipe = "n/a"
        if hint and hint * r["chips"] == recipe:
            gib = r["hint_total_bytes"] / 2**30
            # Over the HBM: XLA:TPU refused it; its figure is what XLA said it needed.
            at_recipe = (f"{gib:.2f} GiB ({hint})" if gib <= r["hbm_gib"] else
                         f"does not fit: needs {gib:.2f} GiB ({hint})")
        n = r["max_batch_per_chip"]
        chips = smallest_slice(recipe, n, gen)
        flops = r.get("flops_per_clip")
        rows.append(
                f"| {NAMES[model]} | {dtype} | {remat} | {gen} "
                f"({r['hbm_gib']:g} GiB) | {at_recipe} | {n} ({r.get('max_batch_predicted')}) "
                f"| {r['train_compile_s']:.0f} | "
                f"{'n/a' if flops is None else f'{flops / 1e9:.0f}'} | "
                f"{'none up to 256 chips' if chips is None else _chips(chips)} "
                f"(batch {recipe}) |")
    if missing:
        rows += ["", f"Not measured yet ({len(missing)} of {len(cells())} cells): "
                 + "; ".join(missing) + "."]
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/compile_table")
    parser.add_argument("--only", default="", help="one backbone")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th cell from the K-th")
    parser.add_argument("--cells", default="",
                        help="comma-separated cell names (e.g. mae_dfer_bfloat16_remat-none_v5e): "
                             "only these, in the table's order")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    k, n = (int(v) for v in args.shard.split("/"))
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        print(render(args.out))
        return
    wanted = {c.strip() for c in args.cells.split(",") if c.strip()}
    unknown = wanted - {cell_name(*c) for c in cells()}
    if unknown:
        parser.error(f"unknown cells {sorted(unknown)}; names look like "
                     f"{cell_name(*cells()[0])}")
    for i, cell in enumerate(cells()):
        if (args.only and cell[0] != args.only) or i % n != k:
            continue
        if wanted and cell_name(*cell) not in wanted:
            continue
        run_cell(args.out, *cell)
    print(render(args.out))


if __name__ == "__main__":
    main()
