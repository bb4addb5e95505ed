"""Regenerate the paper-reference figures (MLP-Mixer paper, Tables 2 and 3) into a folder.

    python analysis/paper_figures.py -o figures/paper

Draws accuracy against pre-training compute (TPUv3 core-days) and against inference throughput
(img/s/core), with the Pareto frontiers, from Table 3's JFT-300M rows and from Table 2; writes the
CSV behind each figure and the frontier fits (fits.csv), then prints which models are on the
frontiers. Same as ``mixer-scaling figures paper -o figures/paper``.
"""

from __future__ import annotations

import argparse
import sys

from mixer_scaling.analysis.figures import render_paper
from mixer_scaling.errors import EXIT_USAGE, UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", default="figures/paper", help="output folder (default figures/paper)")
    p.add_argument("--metric", help="val_top1 (ImageNet top-1, default), real_top1 or avg5")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples for the frontier fits")
    args = p.parse_args(argv)
    try:
        out = render_paper(args.output, metric=args.metric, n_boot=args.boot)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for f in out.files:
        print(f)
    print("\n".join(out.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
