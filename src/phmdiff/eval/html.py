"""Small HTML helpers shared by the report's parts: escaping, numbers that always carry their unit, figures."""

from __future__ import annotations

import html
import math
from pathlib import Path


def e(value) -> str:
    """Any value read from an input file, made inert in HTML (a name like `<script>` shows as text)."""
    return html.escape(str(value), quote=True)


def num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def fmt(value, spec: str = ".4g") -> str:
    """A number as text; infinity as the symbol (identical images give PSNR = inf)."""
    value = num(value)
    if math.isinf(value):
        return "&infin;" if value > 0 else "-&infin;"
    return format(value, spec)


def q(value, unit: str, spec: str = ".4g") -> str:
    """A quantity: the number and its unit in one element, which the report test checks for every number."""
    return f"<span class='q' data-unit='{e(unit)}'>{fmt(value, spec)} {e(unit)}</span>"


def save_figure(fig, img_dir: Path, name: str, dpi: int = 80) -> str:
    """Save and close; figures made with layout="constrained" skip the second drawing bbox_inches needs."""
    import matplotlib.pyplot as plt

    fig.savefig(img_dir / name, dpi=dpi, bbox_inches=None if fig.get_layout_engine() else "tight")
    plt.close(fig)
    return f"img/{name}"
