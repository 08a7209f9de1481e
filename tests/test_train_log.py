"""What a training run prints and logs: the console story, FLOPs, no library chatter."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _train_fakes as fakes  # noqa: E402

from audfer_jax import train  # noqa: E402


def test_console_story_and_flops_in_the_log(tmp_path, capsys):
    cfg = fakes.micro_config()
    train.train_and_evaluate(cfg, str(tmp_path / "run"), data=fakes,
                             model=fakes.MicroModel(num_classes=7))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("data:  demo: 16 train / 10 test clips, 7 classes (happy,")
    assert out[1].startswith("model: micro, 0.01 M parameters, clips 8x32x32; loss au, "
                             "lambda 0.25")
    assert out[2] == ("train: batch 8 on 1 device(s) (1 process(es)), 2 steps/epoch x 2 "
                      "epochs = 4 steps")
    assert "initialised at random (seed 0)" in out
    assert any(line.startswith("train step: ") and "GFLOPs per clip" in line for line in out)
    steps = [line for line in out if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]   # log_every_steps=1
    assert sum(line.startswith("epoch ") for line in out) == 2
    assert out[-1].startswith("done: 4 steps")
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    flops = [r["train/flops_per_sec_per_device"] for r in rows
             if "train/flops_per_sec_per_device" in r]
    assert len(flops) == 4 and all(v > 0 for v in flops)
    assert not any("train/mfu" in r for r in rows)        # no peak for a CPU

    # A resumed run says so; a finished run resumes to nothing more to do.
    cfg.num_epochs = 3
    train.train_and_evaluate(cfg, str(tmp_path / "run"), data=fakes,
                             model=fakes.MicroModel(num_classes=7))
    out = capsys.readouterr().out
    assert f"resumed from step 4 (epoch 3, batch 1) of {tmp_path / 'run'}" in out
