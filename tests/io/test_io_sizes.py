"""parse_size: decimal and binary units, bare ints, clear errors."""

from __future__ import annotations

import pytest

from mergesmith.io import parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2GB", 2_000_000_000),
        ("200KB", 200_000),
        ("5MB", 5_000_000),
        ("1TB", 10**12),
        ("1 KiB", 1024),
        ("3MiB", 3 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("512B", 512),
        ("512", 512),
        ("1.5GB", 1_500_000_000),
        ("0.5KiB", 512),
        ("  7gb ", 7_000_000_000),
        (4096, 4096),
        (0, 0),
    ],
)
def test_valid_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "2XB", "-1GB", "2 G B", "1e9", "two", "0.3B", None, 1.5, True, -5])
def test_invalid_sizes(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    message = str(exc.value)
    assert repr(text) in message or str(text) in message
