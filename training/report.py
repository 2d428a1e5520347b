"""report.png: forecast vs actual on the test split, loss curves, and per-layer gradient norms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_report(
    path: Path,
    *,
    title: str,
    truth: np.ndarray,
    forecast: np.ndarray,
    persistence: np.ndarray,
    history: dict[str, list[float]],
    grad_norms: dict[str, list[float]],
    max_points: int = 168,
) -> None:
    """``truth``/``forecast``/``persistence`` are the first horizon step on the test split."""
    fig, axes = plt.subplots(3, 1, figsize=(11, 11), constrained_layout=True)
    fig.suptitle(title)

    ax = axes[0]
    n = min(max_points, len(truth))
    steps = np.arange(n)
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
    ax.set_title(f"Test split, last {n} windows (first horizon step)")
    ax.set_xlabel("window")
    ax.set_ylabel("target units")
    ax.legend(loc="upper left")

    ax = axes[1]
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
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

    fig.savefig(path, dpi=90)
    plt.close(fig)
