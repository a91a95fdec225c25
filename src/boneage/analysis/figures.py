"""Writing analysis figures: one place for the layout, folder and file handling."""

from __future__ import annotations

from pathlib import Path


def write_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Tight layout, create the folder, save ``fig`` as ``path`` and close it; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
