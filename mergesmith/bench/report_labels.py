"""Labels for the points of a scatter plot that cover no marker and no other label: ``place_labels`` works the
positions out in axes fractions (pure), ``label_points`` measures the texts on a matplotlib axes and places them."""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    radius: tuple[float, float],
    gap: float,
) -> list[tuple[float, float, bool]]:
    """Lower-left corner of each point's label, and whether it needs a leader line.

    Each label tries above, right of, left of and below its point (a marker of half-size ``radius``) and takes the
    first spot that stays inside the unit box and covers no marker and no label placed before it; in a cluster with
    no free spot it moves up above its point until free. Labels are placed lowest point first. All coordinates are
    axes fractions, which behave the same on linear and log axes.
    """
    rx, ry = radius
    taken: list[Box] = [(x - rx, y - ry, x + rx, y + ry) for x, y in anchors]
    order = sorted(range(len(anchors)), key=lambda i: (anchors[i][1], anchors[i][0]))
    corners: list[tuple[float, float, bool]] = [(0.0, 0.0, False)] * len(anchors)

    def free(box: Box) -> bool:
        inside = box[0] >= 0 and box[1] >= 0 and box[2] <= 1 and box[3] <= 1
        return inside and not any(_overlaps(box, other) for other in taken)

    for i in order:
        (x, y), (width, height) = anchors[i], sizes[i]
        candidates = [
            (x - width / 2, y + ry + gap),
            (x + rx + gap, y - height / 2),
            (x - rx - gap - width, y - height / 2),
            (x - width / 2, y - ry - gap - height),
        ]
        spot = next(((x0, y0) for x0, y0 in candidates if free((x0, y0, x0 + width, y0 + height))), None)
        leader = spot is None
        if spot is None:
            x0, y0 = candidates[0]
            while True:
                hits = [other for other in taken if _overlaps((x0, y0, x0 + width, y0 + height), other)]
                if not hits:
                    break
                y0 = max(other[3] for other in hits) + gap / 2
            spot = (x0, y0)
        taken.append((spot[0], spot[1], spot[0] + width, spot[1] + height))
        corners[i] = (spot[0], spot[1], leader)
    return corners


def label_points(fig, ax, names: Sequence[str], xs: Sequence[float], ys: Sequence[float], marker_area: float) -> None:
    """Name every point without a label covering another label or a marker: text sizes are measured with the
    renderer, positions worked out in axes fractions by place_labels."""
    fig.canvas.draw()  # fixes the limits, the layout and the transforms
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transData + ax.transAxes.inverted()
    axes_px = ax.get_window_extent(renderer)
    anchors = [tuple(to_axes.transform((x, y))) for x, y in zip(xs, ys)]
    texts = [
        ax.text(x, y, name, transform=ax.transAxes, ha="left", va="bottom", fontsize=9)
        for name, (x, y) in zip(names, anchors)
    ]
    sizes = []
    for text in texts:
        extent = text.get_window_extent(renderer)
        sizes.append((extent.width / axes_px.width, extent.height / axes_px.height))
    # A marker's radius in points is sqrt(area) / 2; 1 point = dpi / 72 pixels.
    radius_px = math.sqrt(marker_area) / 2 * fig.dpi / 72
    rx, ry = radius_px / axes_px.width, radius_px / axes_px.height
    corners = place_labels(anchors, sizes, (rx, ry), gap=3 / axes_px.height)
    for text, (x, y), (x0, y0, leader) in zip(texts, anchors, corners):
        text.set_position((x0, y0))
        if leader:  # pushed away from its point: a thin line says which point it names
            ax.plot([x, x], [y + ry, y0], transform=ax.transAxes, color="0.6", linewidth=0.7, zorder=1)
