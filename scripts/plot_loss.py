"""Plot a training run's loss curve (runs/<run>/loss.csv) to a PNG for MODEL_CARD.md.

Several CSVs are read in order (a run forked from another continues its curve; later files win
for repeated steps). ``PATH@OFFSET`` shifts a file's steps by ``OFFSET``: a run started with
``--init-from`` counts its steps from 1, so its offset is the step of the weights it started
from. ``--mark STEP:TEXT`` draws a labelled vertical line, e.g. where the loss weighting changed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def parse_source(text: str) -> tuple[Path, int]:
    """``PATH`` or ``PATH@OFFSET`` -> (path, step offset)."""
    path, _, offset = text.partition("@")
    return Path(path), int(offset or 0)


def read_losses(sources: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and losses; a resumed run repeats steps, and the last entry of a step wins."""
    by_step: dict[int, float] = {}
    for path, offset in sources:
        with path.open() as handle:
            for row in csv.DictReader(handle):
                by_step[int(row["step"]) + offset] = float(row["loss"])
    steps = np.array(sorted(by_step))
    return steps, np.array([by_step[s] for s in steps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("loss_csv", nargs="+", help="PATH or PATH@OFFSET")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, default=50, help="moving-average window")
    parser.add_argument("--mark", action="append", default=[], help="STEP:TEXT vertical line")
    args = parser.parse_args()
    steps, losses = read_losses([parse_source(text) for text in args.loss_csv])
    window = max(1, min(args.window, len(losses)))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    axis.plot(steps, losses, lw=0.5, alpha=0.4, label="loss (per step)")
    axis.plot(steps[window - 1 :], smooth, lw=1.5, label=f"moving average ({window})")
    for mark in args.mark:
        step, _, text = mark.partition(":")
        axis.axvline(int(step), color="grey", lw=1, ls="--")
        axis.annotate(
            text,
            (int(step), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-4, -12),
            textcoords="offset points",
            ha="right",
            fontsize=7,
        )
    axis.set_yscale("log")
    axis.set_xlabel("step (batch 16)")
    axis.set_ylabel("loss (epsilon MSE)")
    axis.legend(loc="lower left")
    axis.set_title("mrdiff prior training loss - research use only, not for diagnosis", fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out} ({len(steps)} steps, last smoothed loss {smooth[-1]:.4f})")


if __name__ == "__main__":
    main()
