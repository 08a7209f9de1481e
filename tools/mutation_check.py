"""Mutation check of the recipe-parity tests (issue 30, item 4; not part of the package).

For every numeric constant of the `optim` and loss sections of the three
backbone configs (`configs/former_dfer.py`, `configs/m3dfel.py`,
`configs/mae_dfer.py`: the keywords of `c.optim.update(dict(...))`,
`c.label_smoothing` and the smoothing of `c.mixup.update(dict(...))`), this
changes the constant by about 10 % (a choice: another choice; a zero that
switches something off: on), one at a time, in a scratch copy of the last
commit (`git archive HEAD`; `--working-tree`: of the working tree), runs the default run's parity tests (`tests/test_recipe_parity.py -m
"not slow"`) there, and prints the table of constants, mutations and failing
tests. Every mutation must make at least one test fail: a constant that can
change without any test noticing is a recipe that can drift unseen.

    .venv/bin/python tools/mutation_check.py [--only m3dfel] [--all-tests] \\
        [--markdown OUT.md] [--json OUT.json]

By default each mutation runs only the parity tests whose id names the
mutated recipe (`-k <recipe>`): the others do not read that config file, so
they cannot fail; `--all-tests` runs the whole default set each time. The
first run is the unmutated copy, which must pass.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("former_dfer", "m3dfel", "mae_dfer")
TESTS = "tests/test_recipe_parity.py"
# Constants of 0 < x < 1 that enter as 1 - x (momentum, Adam's betas): 10 %
# of 1 - x (0.999 -> 0.9989), as x * 1.1 would leave (0, 1).
ONE_MINUS = ("momentum", "b1", "b2")
# Choices: the alternative each one is flipped to (the closest other choice).
CHOICES = {"optimizer": {"sgd": "adamw", "adamw": "sgd"},
           "decay_rule": {"all": "mae_dfer", "mae_dfer": "all"},
           "schedule": {"step": "constant", "timm_cosine": "warmup_cosine",
                        "warmup_cosine": "timm_cosine"}}
# A zero that switches something off, switched on: clipping at global norm 1,
# a warmup that starts at 10 % of the base lr, smoothing 0.01.
ZERO_ON = {"grad_clip_norm": lambda c: 1.0, "warmup_lr_init": lambda c: 0.1 * c["lr"],
           "label_smoothing": lambda c: 0.01, "min_lr": lambda c: 0.1 * c["lr"]}


@dataclasses.dataclass
class Constant:
    """One literal of a config file: where it is and what it becomes."""
    recipe: str
    name: str          # e.g. "optim.lr", "label_smoothing", "mixup.label_smoothing"
    value: object
    line: int          # 1-based
    col: int
    end_col: int
    mutated: object = None


def find_constants(recipe: str, source: str) -> list[Constant]:
    """The optim and loss literals of one config file, in source order.

    Raises:
        ValueError: a constant of those sections that is not a literal.
    """
    out = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update" and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in ("optim", "mixup") and node.args
                and isinstance(node.args[0], ast.Call)):
            section = node.func.value.attr
            for kw in node.args[0].keywords:
                if section == "mixup" and kw.arg != "label_smoothing":
                    continue   # the Mixup draws (augmentation), not the loss
                out.append(_constant(recipe, f"{section}.{kw.arg}", kw.value))
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Attribute)
              and node.targets[0].attr == "label_smoothing"):
            out.append(_constant(recipe, "label_smoothing", node.value))
    out.sort(key=lambda c: (c.line, c.col))
    return out


def _constant(recipe: str, name: str, node: ast.AST) -> Constant:
    if not isinstance(node, ast.Constant) or node.lineno != node.end_lineno:
        raise ValueError(f"configs/{recipe}.py {name}: not a one-line literal")
    return Constant(recipe, name, node.value, node.lineno, node.col_offset, node.end_col_offset)


def mutate(const: Constant, siblings: dict) -> object:
    """The mutated value: 10 % (of 1 - x for momenta and betas), a flipped
    choice or boolean, or an off-switch turned on (`ZERO_ON`)."""
    key = const.name.rsplit(".", 1)[-1]
    v = const.value
    if isinstance(v, bool):
        return not v
    if isinstance(v, str):
        return CHOICES[key][v]
    if v == 0:
        return ZERO_ON[key](siblings)
    if key in ONE_MINUS:
        return round(1.0 - 1.1 * (1.0 - v), 12)
    if isinstance(v, int):
        return int(round(v * 1.1)) if int(round(v * 1.1)) != v else v + 1
    return float(f"{v * 1.1:.12g}")


def substitute(source: str, const: Constant, value) -> str:
    lines = source.split("\n")
    line = lines[const.line - 1]
    lines[const.line - 1] = line[:const.col] + repr(value) + line[const.end_col:]
    return "\n".join(lines)


def scratch_copy(dest: pathlib.Path, working_tree: bool) -> pathlib.Path:
    """A copy of the committed tree (`git archive HEAD`), or of the working
    tree without .git, .venv and data (`working_tree`)."""
    repo = dest / "repo"
    if working_tree:
        skip = shutil.ignore_patterns(".git", ".venv", "data", "runs", "workdir",
                                      "__pycache__", "*.egg-info", ".pytest_cache")
        shutil.copytree(ROOT, repo, ignore=skip)
        return repo
    repo.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    return repo


def run_tests(repo: pathlib.Path, select: str | None, timeout: int) -> tuple[int, list[str], float]:
    """`(returncode, failing test ids, seconds)` of the default parity tests in `repo`.

    The package imported is the copy's (`python -m pytest` puts the current
    folder first on sys.path, before the editable install of the original).
    """
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "-rfE", TESTS] + (["-k", select] if select else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0",
               PYTHONDONTWRITEBYTECODE="1")
    t = time.time()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)
    failed = re.findall(r"^(?:FAILED|ERROR) \S+::(\S+)", proc.stdout, re.M)
    return proc.returncode, failed, time.time() - t


def mutations(root: pathlib.Path, only: set[str]) -> list[Constant]:
    """Every constant of the selected recipes' configs under `root`, with its mutated value."""
    out = []
    for recipe in RECIPES:
        if only and recipe not in only:
            continue
        consts = find_constants(recipe, (root / "configs" / f"{recipe}.py").read_text())
        siblings = {c.name.rsplit(".", 1)[-1]: c.value for c in consts if c.name.startswith("optim.")}
        for c in consts:
            c.mutated = mutate(c, siblings)
            out.append(c)
    return out


def table(rows: list[dict]) -> str:
    """Markdown: constant, mutation, failing tests (test function [ids])."""
    lines = ["| config | constant | mutation | failing tests |", "|---|---|---|---|"]
    for r in rows:
        groups: dict[str, list[str]] = {}
        for t in r["failed"]:
            fn, _, ident = t.partition("[")
            groups.setdefault(fn, []).append(ident.rstrip("]"))
        cell = "; ".join(f"`{fn}` [{', '.join(i for i in ids if i)}]" if any(ids) else f"`{fn}`"
                         for fn, ids in groups.items())
        if not r["failed"]:
            cell = f"**none** (exit {r['returncode']})"
        lines.append(f"| {r['recipe']} | `{r['constant']}` | {r['from']!r} -> {r['to']!r} | "
                     f"{cell} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated recipes (default: all three)")
    p.add_argument("--all-tests", action="store_true",
                   help="run every default parity test for each mutation, not only the recipe's")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per test run")
    p.add_argument("--markdown", type=pathlib.Path, help="write the table here too")
    p.add_argument("--json", type=pathlib.Path, help="write the results here too")
    p.add_argument("--list", action="store_true", help="list the mutations and stop")
    p.add_argument("--working-tree", action="store_true",
                   help="mutate a copy of the working tree (default: of the last commit)")
    a = p.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    todo = mutations(ROOT, only)
    if a.list:
        for c in todo:
            print(f"{c.recipe}: {c.name} {c.value!r} -> {c.mutated!r}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        repo = scratch_copy(pathlib.Path(tmp), a.working_tree)
        todo = mutations(repo, only)
        rc, failed, secs = run_tests(repo, None if a.all_tests else "|".join(
                sorted({c.recipe for c in todo})).replace("|", " or "), a.timeout)
        print(f"unmutated: exit {rc}, {len(failed)} failing, {secs:.0f} s", flush=True)
        if rc != 0:
            print("the unmutated copy fails: " + ", ".join(failed), file=sys.stderr)
            return 2
        for c in todo:
            path = repo / "configs" / f"{c.recipe}.py"
            original = path.read_text()
            path.write_text(substitute(original, c, c.mutated))
            try:
                rc, failed, secs = run_tests(repo, None if a.all_tests else c.recipe, a.timeout)
            except subprocess.TimeoutExpired:
                rc, failed, secs = -1, [], float(a.timeout)
            finally:
                path.write_text(original)
            rows.append({"recipe": c.recipe, "constant": c.name, "from": c.value,
                         "to": c.mutated, "returncode": rc, "failed": failed,
                         "seconds": round(secs, 1)})
            print(f"{c.recipe} {c.name} {c.value!r} -> {c.mutated!r}: exit {rc}, "
                  f"{len(failed)} failing, {secs:.0f} s", flush=True)
    text = table(rows)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    survivors = [r for r in rows if not r["failed"]]
    if survivors:
        print(f"{len(survivors)} mutation(s) no test noticed", file=sys.stderr)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
