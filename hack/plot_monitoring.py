"""Draw what the Grafana dashboard's panels showed for a real run, from Prometheus's answers.

Who uses it: whoever refreshes the README's "Monitor" figure. Input: ``.cluster/monitoring-run.json``,
written by the e2e test ``tests/e2e/test_monitoring.py`` (each dashboard panel's queries, with the
variables substituted, and the range results the local Prometheus returned for the run). Nothing is
computed here beyond the plot: the numbers are the scraped series.

    python -m hack.plot_monitoring [--run .cluster/monitoring-run.json] [--out docs/img/monitoring-run.png]

Needs matplotlib (``pip install '.[plot]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PANELS = ("Loss", "Samples/s", "Eval R@k", "Progress", "Learning rate", "Zero-shot accuracy vs the start model")


def _label(metric: dict) -> str:
    keys = ("set", "direction", "k")
    parts = [f"{k}={metric[k]}" for k in keys if k in metric]
    return metric.get("__name__", "") + ("{" + ",".join(parts) + "}" if parts else "")


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
    start = run["start"]
    for ax, title in zip(axes.flat, PANELS, strict=True):
        for query in run["panels"].get(title, []):
            for series in query["result"]:
                if title == "Eval R@k" and (
                    series["metric"].get("k") != "1" or series["metric"].get("direction") != "image_to_text"
                ):
                    continue  # R@1 image->text per eval set keeps the panel readable
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = _label(series["metric"]) or title.lower()
                if "rate(" in query["expr"]:
                    label = "rate(samples_total)"
                ax.plot(xs, ys, marker=".", markersize=3, linewidth=1, label=label)
        ax.set_title(title)
        ax.set_xlabel("seconds since the job was created")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"FineTuneJob {run['namespace']}/{run['job']} on the local node, as scraped by Prometheus "
        "(run by the Prometheus Operator from kubeclip's PodMonitor)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / ".cluster/monitoring-run.json")
    ap.add_argument("--out", type=Path, default=REPO / "docs/img/monitoring-run.png")
    args = ap.parse_args()
    plot(json.loads(args.run.read_text()), args.out)


if __name__ == "__main__":
    main()
