"""A rich renderable as a PNG "terminal screenshot" (the README's picture of `streamscore top`).

rich lays the renderable out into lines of styled segments at a fixed width (``Console.render_lines``: the
segments ``Console(record=True)`` would record, without printing them first); Pillow then draws each
character in its cell with its colours, resolved through a terminal theme as rich's own SVG export does.
That SVG would need a browser or cairo to become a PNG; this needs only Pillow and the DejaVu Sans Mono that
matplotlib always ships, so the picture looks the same on every machine.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from rich.cells import cell_len
from rich.color_triplet import ColorTriplet
from rich.console import Console, RenderableType
from rich.style import Style
from rich.terminal_theme import MONOKAI, TerminalTheme

__all__ = ["save_png", "to_image"]

_MARGIN = 16  # pixels of background around the text


@cache
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    props = font_manager.FontProperties(family="DejaVu Sans Mono", weight="bold" if bold else "normal")
    # No silent fallback to a proportional font: the columns would no longer line up.
    return ImageFont.truetype(font_manager.findfont(props, fallback_to_default=False), size)


RGB = tuple[int, int, int]


def _blend(a: ColorTriplet, b: ColorTriplet, t: float) -> RGB:
    return (
        round(a.red + (b.red - a.red) * t),
        round(a.green + (b.green - a.green) * t),
        round(a.blue + (b.blue - a.blue) * t),
    )


def _colours(style: Style, theme: TerminalTheme) -> tuple[RGB, RGB | None]:
    """Foreground and (if any) background of a cell, resolved as rich's own exports do; dim fades to the back."""
    fg = style.color.get_truecolor(theme, foreground=True) if style.color else theme.foreground_color
    bg = style.bgcolor.get_truecolor(theme, foreground=False) if style.bgcolor else None
    if style.reverse:
        fg, bg = bg or theme.background_color, fg
    back = bg or theme.background_color
    return _blend(fg, back, 0.45 if style.dim else 0.0), (None if bg is None else _blend(bg, bg, 0.0))


def to_image(
    renderable: RenderableType, *, width: int = 110, font_size: int = 15, theme: TerminalTheme = MONOKAI
) -> Image.Image:
    """The renderable laid out ``width`` columns wide and drawn as a terminal would show it."""
    console = Console(
        width=width,
        file=io.StringIO(),
        record=True,
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
    )
    lines = console.render_lines(renderable, console.options, pad=False)
    regular = _font(font_size, bold=False)
    cell_w = regular.getlength("M")
    ascent, descent = regular.getmetrics()
    line_h = ascent + descent  # no leading: box-drawing characters must join from line to line
    columns = max((sum(seg.cell_length for seg in line) for line in lines), default=0)
    size = (round(columns * cell_w) + 2 * _MARGIN, len(lines) * line_h + 2 * _MARGIN)
    image = Image.new("RGB", size, tuple(theme.background_color))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        y = _MARGIN + row * line_h
        col = 0
        for segment in line:
            if segment.control:
                continue
            style = segment.style or Style()
            fg, bg = _colours(style, theme)
            font = _font(font_size, bold=bool(style.bold))
            for char in segment.text:
                cells = cell_len(char)
                x = _MARGIN + col * cell_w
                if bg is not None:
                    draw.rectangle((x, y, x + cells * cell_w, y + line_h - 1), fill=bg)
                if not char.isspace():
                    draw.text((x, y), char, font=font, fill=fg)
                if style.underline:
                    draw.line((x, y + ascent + 1, x + cells * cell_w, y + ascent + 1), fill=fg)
                col += cells
    return image


def save_png(renderable: RenderableType, path: Path, *, width: int = 110, font_size: int = 15) -> Path:
    """Write :func:`to_image` of ``renderable`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_image(renderable, width=width, font_size=font_size).save(path, format="PNG", optimize=True)
    return path
