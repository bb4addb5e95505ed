"""Our Mixer before and after a change to ``models/mixer.py``, and timm's, side by side.

    .venv/bin/python benchmarks/ab_mixer.py [--rev b691cc4] [--model mixer/tiny] [--threads 1] [--repeats 11]

Loads ``src/mixer_scaling/models/mixer.py`` as it was at git revision ``--rev`` (default: the commit
before the speed work) into a module of its own, builds it, the working tree's version and timm's
``MlpMixer`` with the same weights, and times a training step (forward, backward, AdamW) of each,
interleaved. With one thread the time is the thread's CPU time, which other processes on a shared
machine barely disturb (use it to decide whether a change helps); with more, wall time. Not part of
``make bench``: a tool for whoever changes the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import timm_twin  # noqa: E402
from common import ROOT  # noqa: E402

BEFORE = "f060f2a"  # the last commit of models/mixer.py before the token-major Mixer
CASES = {"mixer/tiny": (32, 128), "mixer/s16": (224, 16), "mixer/b16": (224, 8)}


def mixer_module_at(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/mixer_scaling/models/mixer.py"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="ab-mixer-")) / f"mixer_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"mixer_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from mixer_scaling.models import build_model, get_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default=BEFORE)
    p.add_argument("--model", default="mixer/tiny", choices=sorted(CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, batch = CASES[args.model]
    torch.manual_seed(0)
    after = build_model({"name": args.model}, num_classes=1000, image_size=size)
    before = mixer_module_at(args.rev).MlpMixer(num_classes=1000, img_size=size, **get_spec(args.model).kwargs)
    before.load_state_dict(after.state_dict(), strict=True)
    models = {f"before ({args.rev})": before, "after (working tree)": after, "timm": timm_twin(after, args.model, size)}
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    clock = time.thread_time if args.threads == 1 else time.perf_counter

    def step_fn(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.03)

        def step():
            t0 = clock()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return clock() - t0

        return step

    fns = {k: step_fn(m) for k, m in models.items()}
    for f in list(fns.values()) * 2:
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.repeats):
        names = list(fns)[r % 3:] + list(fns)[:r % 3]
        for k in names:
            times[k].append(fns[k]())
    ref = statistics.median(times["timm"])
    what = "thread CPU" if args.threads == 1 else "wall"
    print(f"{args.model}@{size} batch {batch}, {args.threads} thread(s), {what} time per step, "
          f"median of {args.repeats}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<22} {med * 1e3:8.1f} ms   timm/this {ref / med:.3f}   (max/min {max(ts) / min(ts):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
