"""The book's plotting style and shared figure helpers."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

#: The paper's colours: red for cross-entropy, blue for searched losses; greys for references.
COLORS = {"ce": "#d62728", "searched": "#1f77b4", "cw": "#7f7f7f", "dlr": "#2ca02c", "margin": "#9467bd"}


def style() -> None:
    """Apply the book's style (called by every chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.autolayout": True})


def training_curves(logs: pd.DataFrame):
    """Test accuracy and training loss per epoch, one panel per dataset, one line per model."""
    datasets = list(dict.fromkeys(logs["dataset"]))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 6.4), squeeze=False)
    for j, ds in enumerate(datasets):
        d = logs[logs["dataset"] == ds]
        sns.lineplot(data=d, x="epoch", y="test_acc", hue="net", style="training", marker="o", ax=axes[0, j])
        sns.lineplot(data=d, x="epoch", y="train_loss", hue="net", style="training", marker="o", ax=axes[1, j],
                     legend=False)
        axes[0, j].set(title=f"{ds}: clean test accuracy", ylabel="test accuracy")
        axes[1, j].set(title=f"{ds}: training loss (on PGD examples for AT)", ylabel="cross-entropy")
    return fig
