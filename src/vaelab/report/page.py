"""What every vaelab page shares: the Jinja2 environment, the base template (one stylesheet,
for the screen and for print) and images embedded as ``data:`` URIs, so a page is one file that
loads nothing from the network."""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from ..io import atomic_write

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def environment():
    """The templates of :mod:`vaelab.report` (autoescaped: run names and settings are the user's)."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("vaelab.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    return env


def render(template: str, **context) -> str:
    """The page ``template`` (a file of ``report/templates``) filled with ``context``."""
    return environment().get_template(template).render(**context)


def write_page(path: Path, template: str, **context) -> Path:
    """Render ``template`` into ``path``, written whole or not at all."""
    html = render(template, **context)
    atomic_write(Path(path), lambda p: Path(p).write_text(html, encoding="utf-8"))
    return Path(path)


MAX_EMBED_BYTES = 64 << 20  # a picture larger than this is not put in a page


def embeddable(path: Path) -> bool:
    """Whether ``path`` is a picture a page may embed: a PNG, SVG or JPEG by its name, a regular
    file of its own (not a link planted in a run directory), at most :data:`MAX_EMBED_BYTES`."""
    path = Path(path)
    try:
        return (path.suffix.lower() in _MIME and not path.is_symlink() and path.is_file()
                and path.stat().st_size <= MAX_EMBED_BYTES)
    except OSError:
        return False


def data_uri(path: Path) -> str:
    """The file ``path`` (a PNG, SVG or JPEG: see :func:`embeddable`) as a ``data:`` URI for an
    ``<img src>``."""
    path = Path(path)
    mime = _MIME[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def figure_uri(fig, tight: bool = True) -> str:
    """A matplotlib figure as a PNG ``data:`` URI (closed afterwards); ``tight``: crop to what is
    drawn (one more layout pass; a figure already laid out by ``tight_layout`` needs none)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def number(v, digits: int = 4) -> str:
    """A figure for a table: ``digits`` significant digits, integers as they are, '–' for none."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"
    return str(v)
