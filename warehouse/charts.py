"""The report's charts: matplotlib figures drawn with the Agg renderer, returned as PNG data URIs.

Figure objects, not pyplot: no global state, so charts can be drawn in the flow's threads. The page
(warehouse/templates/) inlines each PNG, so the file needs no network; a chart with nothing to draw
says so instead (Chart.empty).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

KEPT, REJECTED, GREY = "#2b7bba", "#d1495b", "#9a9a9a"


@dataclass(frozen=True)
class Chart:
    alt: str = ""
    src: str = ""  # data:image/png;base64,…
    empty: str = ""  # said instead of a chart when there is nothing to draw


def _figure(width: float = 6.4, height: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig, alt: str) -> Chart:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # counts are whole numbers
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if label in ("samples", "problems"):
                axis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return Chart(alt, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())


def funnel(run_id: str, samples: int, steps: list[tuple], xmax: int) -> Chart:
    """Samples, then each filter step: what it let through and what it dropped."""
    if not samples:
        return Chart(empty="no samples in this run")
    labels = ["samples"] + [st for st, *_ in steps]
    kept = [samples] + [k for _, _, _, k, _ in steps]
    dropped = [0] + [dr for _, _, dr, _, _ in steps]
    fig, ax = _figure(6.4, 0.9 + 0.38 * len(labels))
    y = range(len(labels))
    ax.barh(y, kept, color=KEPT, label="kept after the step")
    ax.barh(y, dropped, left=kept, color=REJECTED, label="dropped by the step")
    for i, (k, dr) in enumerate(zip(kept, dropped)):
        ax.text(k + dr + xmax * 0.01, i, f"{k:,}" + (f"  (−{dr:,})" if dr else ""), va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.22)
    ax.set_xlabel("samples")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig, f"funnel of {run_id}")


def lengths(run_id: str, kept: list[int], rejected: list[int], bins: list[float]) -> Chart:
    if not kept and not rejected:
        return Chart(empty="no samples in this run")
    fig, ax = _figure()
    ax.hist([kept, rejected], bins=bins, color=[KEPT, REJECTED],
            label=[f"kept ({len(kept)})", f"rejected ({len(rejected)})"])
    ax.set_xlabel("reasoning length (characters inside <think>)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _png(fig, f"reasoning length of {run_id}")


def pass_rates(run_id: str, rates: list[float]) -> Chart:
    if not rates:
        return Chart(empty="no problems in this run")
    fig, ax = _figure(6.4, 2.6)
    ax.hist(rates, bins=[i / 10 for i in range(11)], color=GREY, edgecolor="white")
    ax.set_xlabel("pass rate of a problem (correct / samples)")
    ax.set_ylabel("problems")
    ax.set_xlim(0, 1)
    return _png(fig, f"pass rate per problem of {run_id}")


def language(run_id: str, scores: list[float], target, min_share) -> Chart:
    if not scores:
        return Chart(empty="no language scores in this run")
    fig, ax = _figure(6.4, 2.6)
    lo = min(0.0, min(scores))
    ax.hist(scores, bins=[lo + (1 - lo) * i / 20 for i in range(21)], color=GREY, edgecolor="white")
    if min_share is not None:
        ax.axvline(min_share, color=REJECTED, linestyle="--", label=f"min_share {min_share}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel(f"share of the reasoning in the target language ({target})")
    ax.set_ylabel("samples")
    return _png(fig, f"language consistency of {run_id}")


def tokens(run_id: str, rows: list[tuple], xmax: int) -> Chart:
    """Completion tokens per outcome; rows are (outcome, samples, prompt, completion, …)."""
    rows = [r for r in rows if r[3]]
    if not rows:
        return Chart(empty="no completion tokens recorded")
    fig, ax = _figure(6.4, 0.9 + 0.32 * len(rows))
    y = range(len(rows))
    ax.barh(y, [r[3] for r in rows], color=[KEPT if r[0] == "kept" else REJECTED for r in rows])
    for i, r in enumerate(rows):
        ax.text(r[3], i, f" {r[3]:,}", va="center", fontsize=8)
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.2)
    ax.set_xlabel("completion tokens")
    return _png(fig, f"completion tokens by outcome of {run_id}")


def throughput(run_id: str, points: list[tuple], origin: str, xmax: float, ymax: int) -> Chart:
    """Cumulative completion tokens over time; points are (seconds since `origin`, tokens)."""
    if not points:
        return Chart(empty="no timestamps recorded")
    xs, total, ys = [], 0, []
    for t, n in points:
        total += n
        xs.append(t)
        ys.append(total)
    fig, ax = _figure(6.4, 2.8)
    ax.step(xs, ys, where="post", color=KEPT)
    ax.plot(xs, ys, "o", color=KEPT, markersize=2)
    ax.set_xlabel(f"seconds since {origin}")
    ax.set_ylabel("completion tokens (cumulative)")
    ax.set_xlim(0, xmax * 1.05 or 1)
    ax.set_ylim(0, ymax * 1.1 or 1)
    return _png(fig, f"throughput of {run_id}")
