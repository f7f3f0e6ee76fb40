"""Human-readable views of an evaluation: a Markdown table and an NDCG@20 plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

OURS = "coldstart"


def _cell(row: dict, metric: str, spread: bool) -> str:
    value = row.get(metric)
    if value is None:
        return "-"
    if metric == "ndcg@20" and spread:
        return f"{value:.4f} ± {row['ndcg@20_std']:.4f}"
    return f"{value:.4f}"


def _several_seeds(results: dict) -> bool:
    """Whether the numbers are means over seeds, with a spread to show."""
    return len(results["seeds"]) > 1


def _table(results: dict, metric: str) -> list[str]:
    methods, spread = results["methods"], _several_seeds(results)
    keys = list(next(iter(methods.values())))
    lines = [f"| {metric} | " + " | ".join(f"k={k}" for k in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for name, by_k in methods.items():
        lines.append(
            f"| {name} | " + " | ".join(_cell(by_k[k], metric, spread) for k in keys) + " |"
        )
    return lines


def _gains(results: dict) -> list[str]:
    """NDCG@20 of ours relative to the best baseline at each k."""
    methods = results["methods"]
    if OURS not in methods:
        return []
    cells = []
    baselines = {n: m for n, m in methods.items() if not n.startswith(OURS)}  # not our variants
    for key, ours in methods[OURS].items():
        best = max((m[key]["ndcg@20"], n) for n, m in baselines.items())
        gain = f"{100 * (ours['ndcg@20'] / best[0] - 1):+.1f}%" if best[0] else "n/a"
        cells.append(f"k={key}: {gain} vs {best[1]}")
    return ["", "coldstart NDCG@20 vs the best baseline: " + "; ".join(cells)]


def write_markdown(results: dict, path: Path) -> None:
    metrics = ["ndcg@20", "recall@20", "mae", "rmse", "ndcg@3"]
    present = next(iter(next(iter(results["methods"].values())).values()))
    # Each seed is its own split, so each has its own number of test users.
    counts = " / ".join(str(run["n_test_users"]) for run in results["per_seed"])
    spread = " (± standard deviation over seeds)" if _several_seeds(results) else ""
    lines = [
        f"# {results['dataset']}: {results['protocol']['name']} protocol",
        "",
        f"{counts} test users in seeds {results['seeds']}; mean over seeds{spread}.",
    ]
    for metric in (m for m in metrics if present.get(m) is not None):
        lines += ["", *_table(results, metric)]
    lines += _gains(results)
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, by_k in results["methods"].items():
        keys = list(by_k)
        axes.errorbar(
            range(len(keys)),
            [by_k[k]["ndcg@20"] for k in keys],
            yerr=[by_k[k]["ndcg@20_std"] for k in keys],
            marker="o",
            linewidth=2.5 if name == OURS else 1.2,
            capsize=3,
            label=name,
        )
        axes.set_xticks(range(len(keys)), keys)
    axes.set_xlabel("support size k (interactions seen)")
    axes.set_ylabel("NDCG@20")
    axes.set_title(f"{results['dataset']}: cold-start users, seeds {results['seeds']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
