"""The evaluation's outputs: ``summary.json``, a markdown table and PNG plots, each stating its origin."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.methods import ABLATIONS, DEFINITIONS, DEGENERATE, METHODS


def averages(tasks: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        method: {
            key: sum(t[method][key] for t in tasks.values()) / len(tasks)
            for key in ("score", "avg_exit", "p50_ms")
        }
        for method in METHODS
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"Backbone `{summary['backbone']}` ({summary['num_layers']} layers); {summary['date']}; "
        f"`{summary['command']}`. Score: accuracy %, CoLA Matthews correlation x 100; "
        "in brackets, the average exit.",
        "",
        *(f"- `{name}`: {meaning}" for name, meaning in DEFINITIONS.items()),
        "",
    ]
    for family, tasks in summary["families"].items():
        rows = {**tasks, "**average**": averages(tasks)}
        lines += [f"### {family}", ""]
        lines += _table(
            "task", METHODS, {task: [_cell(m[name]) for name in METHODS] for task, m in rows.items()}
        )
    return "\n".join(lines)


def degenerate_markdown(summary: dict[str, Any], details: dict[str, Any]) -> str:
    """The baselines that count constant exits, beside their meaningful variants."""
    lines = [
        "### Baselines over every exit, constant ones included",
        "",
        "A constant exit predicts one class for at least 99 % of a train sample; in a causal LM "
        "exit 0 always does. `confidence` and `oracle` above skip such exits. Counting them, "
        "`confidence_all_exits` stops at a confident constant exit and scores that class's share, "
        "and `oracle_all_exits` is right whenever some exit names the gold label: on a binary task "
        "with a constant exit for each class, 100 by construction.",
        "",
    ]
    names = ("confidence", "oracle", *DEGENERATE)
    for family, tasks in summary["families"].items():
        rows = {
            task: [*(_cell(scores[name]) for name in names), _exits(details[family][task]["constant_exits"])]
            for task, scores in tasks.items()
        }
        lines += _table(family, (*names, "constant exits"), rows)
    return "\n".join(lines)


def ablation_markdown(summary: dict[str, Any], details: dict[str, Any]) -> str:
    """RAEE beside its ablations, per family, with the constant exits each ablation ignores."""
    lines = [
        "### Ablation: the exit rule blind to constant exits",
        "",
        "`raee_informative` applies the paper's rule to the same neighbours after removing, from "
        "their exit information, every exit that predicts one class for at least 99 % of a train "
        "sample (listed). Not part of the paper; in `details.json`, not in `summary.json`.",
        "",
    ]
    for family, tasks in details.items():
        scores = summary["families"][family]
        rows = {
            task: [
                _cell(scores[task]["raee"]),
                *(_cell(detail["ablations"][a]) for a in ABLATIONS),
                _cell(scores[task]["static"]),
                _exits(detail["constant_exits"]),
            ]
            for task, detail in tasks.items()
        }
        lines += _table(family, ("raee", *ABLATIONS, "static", "constant exits"), rows)
    return "\n".join(lines)


def _table(corner: str, columns: Sequence[str], rows: dict[str, list[str]]) -> list[str]:
    """A markdown table, then a blank line."""
    lines = [f"| {corner} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return [*lines, ""]


def _exits(exits: Sequence[int]) -> str:
    return ", ".join(map(str, exits)) or "none"


def _cell(values: dict[str, float]) -> str:
    return f"{values['score']:.1f} ({values['avg_exit']:.1f})"


def write(summary: dict[str, Any], details: dict[str, Any], out: Path) -> list[Path]:
    """Write summary.json, results.md, details.json and the plots under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "results.md", out / "details.json"]
    written[0].write_text(json.dumps(summary, indent=2) + "\n")
    sections = (markdown(summary), degenerate_markdown(summary, details), ablation_markdown(summary, details))
    written[1].write_text("\n".join(sections) + "\n")
    written[2].write_text(json.dumps(details, indent=2) + "\n")
    written += plots(summary, details, out)
    return written


def plots(summary: dict[str, Any], details: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = f"{summary['backbone']} · {summary['date']} · {summary['command']}"
    written = []
    for family, tasks in details.items():
        figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 2.8), squeeze=False)
        for axis, (task, detail) in zip(axes[0], tasks.items(), strict=True):
            histogram = detail["raee_exit_histogram"]
            axis.bar(range(len(histogram)), histogram)
            axis.set_title(task)
            axis.set_xlabel("exit layer")
        axes[0][0].set_ylabel("queries")
        figure.suptitle(f"RAEE exit layers, {family} templates", fontsize=10)
        figure.text(0.01, 0.005, origin, fontsize=6)
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / f"exit_histogram_{family}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    # One colour per method, one marker per template family.
    colours = {method: f"C{i}" for i, method in enumerate(METHODS)}
    markers = "o^sDvP"
    figure, axis = plt.subplots(figsize=(6, 4))
    for (family, tasks), marker in zip(summary["families"].items(), markers, strict=False):
        for method, values in averages(tasks).items():
            axis.scatter(
                values["avg_exit"],
                values["score"],
                color=colours[method],
                marker=marker,
                label=f"{method} ({family})",
            )
    axis.set_xlabel(f"average exit layer (of {summary['num_layers']})")
    axis.set_ylabel("average score")
    axis.legend(fontsize=6, ncol=2)
    figure.text(0.01, 0.005, origin, fontsize=6)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "score_vs_depth.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written
