"""Human-readable views of an evaluation: a Markdown table and an NDCG@20 plot."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

OURS = "coldstart"
LOWER_IS_BETTER = {"mae", "rmse"}
NEITHER = {"mixed_cold_share@20"}  # a share to read, not to maximise
METRICS = [  # in table order
    "ndcg@20",
    "recall@20",
    "mae",
    "rmse",
    "ndcg@3",
    "mixed_ndcg@20",
    "mixed_cold_share@20",
]


def _size(results: dict) -> str:
    """The support-size letter: k interactions of a user, n of an item."""
    return "n" if results["protocol"]["name"] == "item-coldstart" else "k"


def _cell(row: dict | None, metric: str, spread: bool) -> str:
    value = None if row is None else row.get(metric)
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
    size = _size(results)
    lines = [f"| {metric} | " + " | ".join(f"{size}={k}" for k in keys) + " |"]
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
    for key, ours in methods[OURS].items():
        rivals = [(m[key]["ndcg@20"], n) for n, m in _baselines(results).items() if m[key]]
        best = max(rivals)
        gain = f"{100 * (ours['ndcg@20'] / best[0] - 1):+.1f}%" if best[0] else "n/a"
        cells.append(f"{_size(results)}={key}: {gain} vs {best[1]}")
    return ["", "coldstart NDCG@20 vs the best baseline: " + "; ".join(cells)]


def _baselines(results: dict) -> dict:
    """The methods compared with ours: every one but ours and its variants."""
    return {n: m for n, m in results["methods"].items() if not n.startswith(OURS)}


def _shrinking_queries(results: dict) -> list[str]:
    """Where every method's NDCG@20 falls as k grows, say why: the query set is what follows
    the first k interactions, so a larger k leaves the same users fewer relevant items to
    find, and a hit in the top 20 gets rarer for every method alike."""
    methods = results["methods"]
    if results["protocol"]["name"] != "coldstart":  # the melu protocol has one support size
        return []
    spans: list[list[str]] = []  # [first k, last k] of each run of falls
    for a, b in itertools.pairwise(next(iter(methods.values()))):
        if all(by_k[b]["ndcg@20"] < by_k[a]["ndcg@20"] for by_k in methods.values()):
            if spans and spans[-1][1] == a:
                spans[-1][1] = b
            else:
                spans.append([a, b])
    if not spans:
        return []
    where = " and ".join(f"from k={a} to k={b}" for a, b in spans)
    return [
        f"- Every method's NDCG@20 falls {where}. The query set is the interactions after the "
        "first k, so it shrinks as k grows: the same users have fewer relevant items left to "
        "find, and a falling curve is not a method getting worse."
    ]


def _baseline_wins(results: dict, metrics: list[str]) -> list[str]:
    """Each metric on which a baseline does better than ours, and at which k."""
    methods = results["methods"]
    if OURS not in methods:
        return []
    notes = []
    for metric in [m for m in metrics if m not in NEITHER]:
        sign = -1 if metric in LOWER_IS_BETTER else 1
        wins = []
        for name, by_k in _baselines(results).items():
            keys = [
                key
                for key, ours in methods[OURS].items()
                if by_k[key] is not None
                and by_k[key].get(metric) is not None
                and ours.get(metric) is not None
                and sign * by_k[key][metric] > sign * ours[metric]
            ]
            size = _size(results)
            if len(keys) == len(methods[OURS]) > 1:
                wins.append(f"{name} at every {size}")
            elif keys:
                wins.append(f"{name} at {size}={', '.join(keys)}")
        if wins:
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            notes.append(
                f"- A baseline beats {OURS} on {metric} ({better} is better): "
                + "; ".join(wins)
                + "."
            )
    return notes


def _notes(results: dict, metrics: list[str]) -> list[str]:
    notes = _shrinking_queries(results) + _baseline_wins(results, metrics)
    return ["", "## Notes", "", *notes] if notes else []


def write_markdown(results: dict, path: Path) -> None:
    present = next(iter(next(iter(results["methods"].values())).values()))
    metrics = [m for m in METRICS if present.get(m) is not None]
    # Each seed is its own split, so each has its own number of test users (or items).
    tested = "n_test_items" if "n_test_items" in results else "n_test_users"
    counts = " / ".join(str(run[tested]) for run in results["per_seed"])
    spread = " (± standard deviation over seeds)" if _several_seeds(results) else ""
    what = "test items" if tested == "n_test_items" else "test users"
    lines = [
        f"# {results['dataset']}: {results['protocol']['name']} protocol",
        "",
        f"{counts} {what} in seeds {results['seeds']}; mean over seeds{spread}.",
    ]
    if "text_encoder" in results:
        encoder = results["text_encoder"]
        used = f"{encoder['name']} {encoder['version']}" if encoder else "none"
        lines += ["", f"Item text encoder: {used}."]
    for metric in metrics:
        lines += ["", *_table(results, metric)]
    lines += _gains(results)
    lines += _notes(results, metrics)
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, by_k in results["methods"].items():
        keys = list(by_k)
        shown = [i for i, k in enumerate(keys) if by_k[k] is not None]
        axes.errorbar(
            shown,
            [by_k[keys[i]]["ndcg@20"] for i in shown],
            yerr=[by_k[keys[i]]["ndcg@20_std"] for i in shown],
            marker="o",
            linewidth=2.5 if name == OURS else 1.2,
            capsize=3,
            label=name,
        )
        axes.set_xticks(range(len(keys)), keys)
    items = _size(results) == "n"
    axes.set_xlabel(f"support size {_size(results)} (interactions seen)")
    axes.set_ylabel("NDCG@20 (ranking the cold items)" if items else "NDCG@20")
    who = "cold-start items" if items else "cold-start users"
    axes.set_title(f"{results['dataset']}: {who}, seeds {results['seeds']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
