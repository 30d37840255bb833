"""Benchmark: the MT-net paper's experiments (Lee & Choi 2018) at a small CPU budget.

Every run is the experiment config (conf/experiment/mtnet_*.yaml) with a shorter schedule: the same
models, learning rates, meta-batch (4 for regression) and fixed test tasks, but ``--iterations``
meta-iterations instead of 60,000 (``--omniglot-iterations`` and ``--omniglot-meta-batch`` for
Omniglot instead of 40,000 x 32). Runs execute in this process, one after another, through
``metaplus.run.run``. One seed per cell: differences within a CI are not findings.

1. sinusoid, both task definitions (MAML's; MT-net's with frequency f ~ U[0.8, 1.2]), 5/10/20-shot:
   MAML, Meta-SGD, T-net, MT-net; test MSE +- CI95 after 1 and after 10 inner steps;
2. alpha robustness: MAML vs MT-net, 10-shot sinusoid, alpha in {0.001, 0.01, 0.1, 1.0};
3. polynomial orders 0, 1, 2 (MT-net): the learned fraction of updated units per layer;
4. Omniglot 5-way 1-shot, Conv-4: MAML vs MT-net at the same budget.

    OMP_NUM_THREADS=1 python bench/mtnet.py                       # the default small budget
    python bench/mtnet.py --iterations 60000 --omniglot-iterations 40000 --omniglot-meta-batch 32
    python bench/mtnet.py --only polynomial alpha                 # some experiments
Writes bench/results/mtnet{tag}.json, .md (the tables) and .png (the plots).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EXPERIMENTS = ("sinusoid", "alpha", "polynomial", "omniglot")
SINUSOID_ALGOS = ("maml", "metasgd", "tnet", "mtnet")
ALPHAS = (0.001, 0.01, 0.1, 1.0)
QUIET = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=50",
]


def train(name: str, overrides: list[str], out: Path) -> dict:
    from metaplus.compose import compose_config
    from metaplus.run import run

    start = time.time()
    metrics = run(compose_config(QUIET + overrides, out / name, cwd=REPO))
    metric = "mse" if "test/mse" in metrics else "acc"
    curve, ci = metrics[f"test/{metric}_by_step"], metrics[f"test/{metric}_ci95_by_step"]
    row = {
        "name": name,
        "overrides": overrides,
        "metric": metric,
        "step1": curve[min(1, len(curve) - 1)],
        "step1_ci95": ci[min(1, len(ci) - 1)],
        "final": curve[-1],
        "final_ci95": ci[-1],
        "curve": curve,
        "wall_time_s": round(time.time() - start, 1),
        **{k: v for k, v in metrics.items() if k.startswith(("mtnet/", "tnet/"))},
    }
    print(
        f"{name:40s} test {metric} after 1 step {row['step1']:.4f} ± {row['step1_ci95']:.4f}, after "
        f"{len(curve) - 1} steps {row['final']:.4f} ± {row['final_ci95']:.4f}  ({row['wall_time_s']:.0f} s)",
        flush=True,
    )
    return row


def schedule(iterations: int, test_episodes: int) -> list[str]:
    return [f"data.batches_per_epoch={iterations}", f"data.test_episodes={test_episodes}", "data.val_episodes=100"]


def sinusoid(args, out: Path) -> list[dict]:
    rows = []
    for definition, experiment in (("maml", "mtnet_sinusoid"), ("freq", "mtnet_sinusoid_freq")):
        for shots in (5, 10, 20):
            for algo in SINUSOID_ALGOS:
                row = train(
                    f"sinusoid-{definition}-{shots}shot-{algo}",
                    [
                        f"experiment={experiment}",
                        f"algo={algo}",
                        f"data.shots={shots}",
                        "algo.test_inner_steps=10",
                        *schedule(args.iterations, args.test_episodes),
                    ],
                    out,
                )
                rows.append({**row, "definition": definition, "shots": shots, "algo": algo})
    return rows


def alpha(args, out: Path, done: list[dict]) -> list[dict]:
    rows = []
    for algo in ("maml", "mtnet"):
        for lr in ALPHAS:
            reuse = [
                r
                for r in done
                if r.get("definition") == "maml" and r.get("shots") == 10 and r.get("algo") == algo and lr == 0.01
            ]  # the sinusoid table already has alpha = 0.01
            row = (
                reuse[0]
                if reuse
                else train(
                    f"alpha-{algo}-{lr}",
                    [
                        "experiment=mtnet_alpha",
                        f"algo={algo}",
                        f"algo.inner_lr={lr}",
                        *schedule(args.iterations, args.test_episodes),
                    ],
                    out,
                )
            )
            rows.append({**row, "algo": algo, "alpha": lr})
    return rows


def polynomial(args, out: Path) -> list[dict]:
    return [
        {
            **train(
                f"polynomial-order{order}-mtnet",
                [
                    "experiment=mtnet_polynomial",
                    f"data.source.order={order}",
                    *schedule(args.iterations, args.test_episodes),
                ],
                out,
            ),
            "order": order,
        }
        for order in (0, 1, 2)
    ]


def omniglot(args, out: Path) -> list[dict]:
    rows = []
    for algo in ("maml", "mtnet"):
        row = train(
            f"omniglot-5w1s-{algo}",
            [
                "experiment=mtnet_omniglot",
                f"algo={algo}",
                f"data.meta_batch_size={args.omniglot_meta_batch}",
                f"data.batches_per_epoch={args.omniglot_iterations}",
                "data.val_episodes=50",
                f"data.test_episodes={args.omniglot_test_episodes}",
            ],
            out,
        )
        rows.append({**row, "algo": algo})
    return rows


# -- reporting ----------------------------------------------------------------------------------
def fmt(row: dict, key: str = "final", ci: bool = True) -> str:
    # A NaN mean means adaptation blew up on some test episodes (too large a step for that many steps).
    if not math.isfinite(row[key]):
        return "diverged"
    return f"{row[key]:.3f} ± {row[key + '_ci95']:.3f}" if ci else f"{row[key]:.3f}"


def tables(results: dict, budget: dict) -> str:
    lines = [
        "# MT-net experiments at a small CPU budget",
        "",
        "Budget: " + ", ".join(f"{k}={v}" for k, v in budget.items()) + ". One seed per cell.",
        "`diverged`: the test loss is not finite on some episodes (that inner step size, kept for that many "
        "steps, blows up).",
        "",
    ]
    if results.get("sinusoid"):
        for definition, title in (("maml", "y = A sin(x - phi)"), ("freq", "y = A sin(f x - phi), f ~ U[0.8, 1.2]")):
            lines += [
                f"## Sinusoid, {title}: test MSE ± CI95 after 1 / 10 inner steps",
                "",
                "| algo | 5-shot | 10-shot | 20-shot |",
                "|---|---|---|---|",
            ]
            for algo in SINUSOID_ALGOS:
                cells = []
                for shots in (5, 10, 20):
                    match = [
                        r
                        for r in results["sinusoid"]
                        if (r["definition"], r["shots"], r["algo"]) == (definition, shots, algo)
                    ]
                    cells.append(f"{fmt(match[0], 'step1')} / {fmt(match[0])}" if match else "–")
                lines.append(f"| {algo} | " + " | ".join(cells) + " |")
            lines.append("")
    if results.get("alpha"):
        lines += [
            "## Inner learning rate: 10-shot sinusoid test MSE ± CI95 after 10 steps (after 1 step)",
            "",
            "| algo | " + " | ".join(f"α={a}" for a in ALPHAS) + " |",
            "|---|" + "---|" * len(ALPHAS),
        ]
        for algo in ("maml", "mtnet"):
            cells = [
                f"{fmt(r)} ({fmt(r, 'step1', ci=False)})"
                for a in ALPHAS
                for r in results["alpha"]
                if (r["algo"], r["alpha"]) == (algo, a)
            ]
            lines.append(f"| {algo} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("polynomial"):
        layers = sorted(
            {k.rsplit("/", 1)[1] for r in results["polynomial"] for k in r if k.startswith("mtnet/update_fraction/")},
            key=lambda s: (s == "all", s),
        )
        lines += [
            "## Polynomial regression (MT-net, 10-shot): learned fraction of updated units, P(M=1), per layer",
            "",
            "| order | " + " | ".join(layers) + " | test MSE (10 steps) |",
            "|---|" + "---|" * (len(layers) + 1),
        ]
        for r in results["polynomial"]:
            lines.append(
                f"| {r['order']} | "
                + " | ".join(f"{r[f'mtnet/update_fraction/{l}']:.3f}" for l in layers)
                + f" | {fmt(r)} |"
            )
        lines.append("")
    if results.get("omniglot"):
        lines += [
            "## Omniglot 5-way 1-shot, Conv-4: test accuracy ± CI95",
            "",
            "| algo | after 1 step | after 10 steps | wall time (s) |",
            "|---|---|---|---|",
        ]
        for r in results["omniglot"]:
            lines.append(f"| {r['algo']} | {fmt(r, 'step1')} | {fmt(r)} | {r['wall_time_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in EXPERIMENTS if results.get(k)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        rows = results[panel]
        if panel == "sinusoid":
            for algo in SINUSOID_ALGOS:
                for definition, style in (("maml", "-"), ("freq", "--")):
                    pts = sorted(
                        (r["shots"], r["final"]) for r in rows if (r["algo"], r["definition"]) == (algo, definition)
                    )
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", label=f"{algo} ({definition})")
            ax.set(xlabel="shots", ylabel="test MSE, 10 steps", yscale="log", title="sinusoid")
        elif panel == "alpha":
            for algo in ("maml", "mtnet"):
                pts = sorted((r["alpha"], r["final"]) for r in rows if r["algo"] == algo)
                ax.plot(*zip(*pts), marker="o", label=algo)
            ax.set(xlabel="inner lr α", ylabel="test MSE, 10 steps", xscale="log", yscale="log", title="α robustness")
        elif panel == "polynomial":
            layers = sorted({k.rsplit("/", 1)[1] for r in rows for k in r if k.startswith("mtnet/update_fraction/")})
            for layer in layers:
                ax.plot(
                    [r["order"] for r in rows],
                    [r[f"mtnet/update_fraction/{layer}"] for r in rows],
                    marker="o",
                    label=layer,
                )
            ax.set(
                xlabel="polynomial order", ylabel="P(unit updated)", xticks=[0, 1, 2], title="MT-net update fraction"
            )
        else:
            for r in rows:
                ax.plot(range(len(r["curve"])), r["curve"], marker="o", label=r["algo"])
            ax.set(xlabel="inner steps at test", ylabel="test accuracy", title="Omniglot 5w1s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="meta-iterations per regression run")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--omniglot-iterations", type=int, default=150)
    parser.add_argument("--omniglot-meta-batch", type=int, default=8)
    parser.add_argument("--omniglot-test-episodes", type=int, default=300)
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="re-render bench/results/mtnet<tag>.md from the saved JSON without training",
    )
    args = parser.parse_args()
    if args.tables_only:
        saved = json.loads((RESULTS / f"mtnet{args.tag}.json").read_text())
        budget = saved.pop("budget")
        (RESULTS / f"mtnet{args.tag}.md").write_text(tables(saved, budget) + "\n")
        return
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    os.environ.setdefault("WANDB_MODE", "offline")
    shared = REPO.parent / "shared" / "data"
    if "METAPLUS_DATA" not in os.environ and shared.is_dir():
        os.environ["METAPLUS_DATA"] = str(shared)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "metaplus"):
        logging.getLogger(name).setLevel(logging.ERROR)

    out = REPO / "outputs" / "bench" / f"mtnet-{time.strftime('%Y%m%d-%H%M%S')}"
    budget = {
        "regression_iterations": args.iterations,
        "regression_meta_batch": 4,
        "test_episodes": args.test_episodes,
        "omniglot_iterations": args.omniglot_iterations,
        "omniglot_meta_batch": args.omniglot_meta_batch,
        "omniglot_test_episodes": args.omniglot_test_episodes,
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }
    results: dict[str, list] = {}
    start = time.time()
    if "sinusoid" in args.only:
        results["sinusoid"] = sinusoid(args, out)
    if "alpha" in args.only:
        results["alpha"] = alpha(args, out, results.get("sinusoid", []))
    if "polynomial" in args.only:
        results["polynomial"] = polynomial(args, out)
    if "omniglot" in args.only:
        results["omniglot"] = omniglot(args, out)
    budget["total_wall_time_s"] = round(time.time() - start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"mtnet{args.tag}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"budget": budget, **results}, indent=2) + "\n")
    report = tables(results, budget)
    (RESULTS / f"{name}.md").write_text(report + "\n")
    plot(results, RESULTS / f"{name}.png")
    # The generic per-run table of every results.json, from the project's report script.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "metaplus.report",
            str(out),
            "--out",
            str(RESULTS / f"{name}_report"),
            "--title",
            f"{name}: every run",
        ],
        check=True,
    )
    print("\n" + report)
    print(f"saved {RESULTS / name}.json, .md and .png")


if __name__ == "__main__":
    main()
