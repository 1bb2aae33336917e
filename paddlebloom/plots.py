"""PNG figures for people to read (loss curves, length histograms), written atomically.

matplotlib is loaded when the first figure is drawn, not when a trainer or tool is imported.
"""

from .atomic import write_file_atomic


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed)."""
    import matplotlib  # optional: matplotlib - only figures need it (~0.4 s and 150 modules to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: matplotlib - after the backend is chosen

    return plt


def save_png(fig, path: str) -> str:
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    pyplot().close(fig)
    return path
