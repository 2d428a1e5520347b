"""report.png: forecast vs actual on the test split with its calibrated prediction intervals,
loss curves, per-layer gradient norms, and the model's validation and test MAE next to every
baseline's (divided by persistence's)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.baselines import Baselines  # noqa: E402
from training.intervals import IntervalScore  # noqa: E402


def plot_report(
    path: Path,
    *,
    title: str,
    truth: np.ndarray,
    forecast: np.ndarray,
    persistence: np.ndarray,
    history: dict[str, list[float]],
    grad_norms: dict[str, list[float]],
    baselines: Baselines | None = None,
    bands: tuple[tuple[float, ...], np.ndarray, np.ndarray] | None = None,
    band_scores: tuple[IntervalScore, ...] = (),
    max_points: int = 168,
) -> None:
    """``truth``/``forecast``/``persistence`` are the first horizon step on the test split;
    ``baselines`` (with the model's one-step MAE set) adds the comparison chart; ``bands``
    (levels, lo and hi ``[n, levels]`` of the same points) shades the prediction intervals, and
    ``band_scores`` (their test coverage and width) goes into the title."""
    rows = 4 if baselines is not None else 3
    fig, axes = plt.subplots(rows, 1, figsize=(11, 11 + 4 * (rows - 3)), constrained_layout=True)
    fig.suptitle(title)

    ax = axes[0]
    n = min(max_points, len(truth))
    steps = np.arange(n)
    if bands is not None:
        levels, lo, hi = bands
        # Widest first, so that the narrower bands are drawn on top of it.
        for i in sorted(range(len(levels)), key=lambda i: -levels[i]):
            alpha = 0.15 + 0.2 * (levels[i] == min(levels))
            ax.fill_between(
                steps,
                lo[-n:, i],
                hi[-n:, i],
                color="tab:blue",
                alpha=alpha,
                linewidth=0,
                label=f"{levels[i]:g}% interval",
            )
    ax.plot(steps, truth[-n:], label="actual", color="black", linewidth=1.2)
    ax.plot(steps, forecast[-n:], label="LSTM forecast", color="tab:blue", linewidth=1.0)
    ax.plot(
        steps,
        persistence[-n:],
        label="persistence",
        color="tab:gray",
        linewidth=0.8,
        linestyle="--",
    )
    coverage = "; ".join(
        f"{s.level:g}% covers {s.coverage:.1%}, width {s.mean_width:.4g}" for s in band_scores
    )
    ax.set_title(
        f"Test split, last {n} windows (first horizon step)"
        + (f"\nintervals over the whole test split: {coverage}" if coverage else "")
    )
    ax.set_xlabel("window")
    ax.set_ylabel("target units")
    ax.legend(loc="upper left")

    ax = axes[1]
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key, marker=".")
    ax.set_yscale("log")
    ax.set_title("Loss (MSE on the model's scaled target)")
    ax.set_xlabel("epoch")
    ax.legend()

    ax = axes[2]
    for name, norms in grad_norms.items():
        ax.plot(np.arange(len(norms)), np.maximum(norms, 1e-12), label=name, marker=".")
    ax.set_yscale("log")
    ax.set_title("Gradient L2 norm per layer (epoch 0 = before training)")
    ax.set_xlabel("epoch")
    ax.legend()

    if baselines is not None:
        _plot_baselines(axes[3], baselines)

    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_baselines(ax: plt.Axes, baselines: Baselines) -> None:
    """Horizontal bars: validation and test MAE of the model and of each baseline, divided by
    persistence's on the same split (below 1 beats persistence)."""
    names = ["LSTM (this model)"] + [s.label for s in baselines.scores]
    val = [baselines.model_val_mae] + [s.val_mae for s in baselines.scores]
    test = [baselines.model_test_mae] + [s.test_mae for s in baselines.scores]
    persistence = baselines.persistence

    def ratios(values: list[float | None], reference: float) -> np.ndarray:
        return np.array(
            [v / reference if v is not None and reference > 0 else np.nan for v in values]
        )

    y = np.arange(len(names))
    height = 0.4
    for offset, values, reference, label in (
        (-height / 2, val, persistence.val_mae, "validation"),
        (height / 2, test, persistence.test_mae, "test"),
    ):
        bars = ax.barh(y + offset, ratios(values, reference), height, label=label)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("one-step MAE / persistence MAE (same points; lower is better)")
    periods = ", ".join(map(str, baselines.periods)) or "none"
    ax.set_title(f"Model vs baselines (seasonal periods detected: {periods})")
    ax.legend(loc="lower right")
