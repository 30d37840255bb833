"""MT-net: the fraction of units the learned masks update, P(M=1), against meta-iterations.

Reads the CSV logs (`logger=csv`) of MT-net runs, plots `mtnet/update_fraction/<layer>` against the
step, one panel per layer, one line per run, and prints the end-of-training fractions as a markdown
table (the report script's table shows them at the evaluated, best-validation checkpoint instead).

The paper's polynomial experiment at its budget (60,000 meta-iterations, meta-batch 4), one process per
order, then this script and the report:

    for o in 0 1 2; do OMP_NUM_THREADS=1 python train.py experiment=mtnet_polynomial data.source.order=$o \\
        logger=csv hydra.run.dir=outputs/bench/mtnet_polynomial_60k/order$o & done; wait
    python bench/mask_fractions.py outputs/bench/mtnet_polynomial_60k/order* --out bench/results/mtnet_polynomial_60k
    python -m metaplus.report outputs/bench/mtnet_polynomial_60k --out bench/results/mtnet_polynomial_60k \\
        --metrics 'mtnet/update_fraction/*'
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PREFIX = "mtnet/update_fraction/"


def fraction_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """layer -> [(step, fraction)] from the run's csv/metrics.csv."""
    metrics = run_dir / "csv" / "metrics.csv"
    if not metrics.is_file():
        raise SystemExit(f"{metrics}: not found (train the run with logger=csv)")
    curves: dict[str, list[tuple[int, float]]] = {}
    with metrics.open() as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key.startswith(PREFIX) and value:
                    curves.setdefault(key[len(PREFIX) :], []).append((int(row["step"]), float(value)))
    if not curves:
        raise SystemExit(f"{metrics}: no {PREFIX}* columns (is it an MT-net run with use_M=true?)")
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with csv/metrics.csv)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves = {run.name: fraction_curves(run) for run in args.runs}
    layers = list(dict.fromkeys(layer for per_run in curves.values() for layer in per_run))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.2), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for name, per_run in curves.items():
            steps, values = zip(*per_run.get(layer, [(0, float("nan"))]))
            ax.plot(steps, values, label=name, alpha=0.85)
        ax.set(title=layer, xlabel="meta-iteration", ylim=(0, 1))
    axes[0, 0].set_ylabel("fraction of units updated, P(M=1)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "update_fraction.png", dpi=120)

    table = ["| run | step | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
    for name, per_run in curves.items():
        step = max(s for points in per_run.values() for s, _ in points)
        table.append(
            f"| {name} | {step + 1} | "
            + " | ".join(f"{per_run[l][-1][1]:.3f}" if l in per_run else "–" for l in layers)
            + " |"
        )
    text = "# MT-net: fraction of updated units at the end of training\n\n" + "\n".join(table) + "\n"
    (args.out / "update_fraction.md").write_text(text)
    print(text + f"\nsaved {args.out / 'update_fraction.png'} and {args.out / 'update_fraction.md'}")


if __name__ == "__main__":
    main()
