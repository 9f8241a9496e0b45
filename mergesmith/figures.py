"""Matplotlib figures as reproducible PNG bytes, and PNG bytes as an HTML image: what every report embeds."""

from __future__ import annotations

import base64
import html
import io


def png_bytes(fig, *, dpi: int = 100, tight: bool = True, close: bool = True) -> bytes:
    """The figure as PNG without the "Software" text chunk (it carries the matplotlib version): same data, same
    bytes. ``close`` releases a pyplot figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight" if tight else None)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buffer.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inline as a data URI, so a report is one self-contained HTML file."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
