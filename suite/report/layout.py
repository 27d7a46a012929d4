"""Page layout of the report: A4 landscape pages with a heading band, a body and a caption band that never
overlap, tables whose cells wrap and which split over pages, and text flowed into columns (the appendix).

Text is wrapped by measured width (each character's advance in the actual font), not by a guessed character
count, so a cell or a heading never runs into its neighbour. Every page's body is a rectangle below the heading
and above the caption; figures put their axes in it with matplotlib's constrained layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from suite.plots import new_figure

SUITE_NAME = "MBQuant reproducibility suite"
PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
MARGIN = 0.45  # left / right, inches
TOP = 0.32  # inches above the heading: room for the scale banner
FOOTER = 0.28  # inches below the caption: room for the page number
LINE = 1.3  # line height / font size
PAD = 0.03  # inches above and below a table cell's text
MONO = "DejaVu Sans Mono"


# ------------------------------------------------------------------------------------------------ measuring text

@cache
def _char_width(char: str, weight: str, family: str) -> float:
    """Advance of one character at 10 pt, in points."""
    prop = FontProperties(family=family, weight=weight, size=10)
    return TextToPath().get_text_width_height_descent(char, prop, ismath=False)[0]


def text_width(text: str, size: float, weight: str = "normal", family: str = "sans-serif") -> float:
    """Width of one line in points: the sum of its characters' advances (kerning only ever narrows it)."""
    return size / 10 * sum(_char_width(c, weight, family) for c in text)


def _split_word(word: str, width: float, size: float, weight: str, family: str) -> list[str]:
    """A word wider than the line (a manifest name, a run id) cut where it must, preferably after _ / , -."""
    pieces, current = [], ""
    for char in word:
        if current and text_width(current + char, size, weight, family) > width:
            cut = max(current.rfind(c) for c in "_/,-") + 1
            cut = cut if cut > len(current) // 2 else len(current)
            pieces.append(current[:cut])
            current = current[cut:]
        current += char
    return pieces + [current]


def wrap(text: str, width_in: float, size: float, weight: str = "normal", family: str = "sans-serif") -> list[str]:
    """``text`` as lines no wider than ``width_in`` inches at ``size`` pt; explicit newlines are kept."""
    width = width_in * 72 * 0.97  # a little slack for hinting
    lines = []
    for paragraph in str(text).split("\n"):
        indent = paragraph[:len(paragraph) - len(paragraph.lstrip(" "))]  # kept: YAML and code keep their shape
        line = ""
        for word in paragraph.split():
            for piece in _split_word(word, width, size, weight, family):
                candidate = f"{line} {piece}" if line else indent + piece
                if line and text_width(candidate, size, weight, family) > width:
                    lines.append(line)
                    candidate = indent + "  " + piece if family == MONO else piece  # continued line
                line = candidate
        lines.append(line)
    return lines


def text_block(fig: Figure, x: float, y: float, lines: list[str], size: float, **kwargs) -> float:
    """Draw ``lines`` from the top at (x, y) in inches from the top-left corner; returns the y below them."""
    w, h = PAGE_SIZE
    for line in lines:
        fig.text(x / w, 1 - y / h, line, fontsize=size, va="top", **kwargs)
        y += size * LINE / 72
    return y


# --------------------------------------------------------------------------------------------------------- pages

@dataclass
class Page:
    """A page with its heading at the top, its caption at the bottom and the body between, in inches."""

    fig: Figure
    body_top: float  # inches from the top
    body_bottom: float  # inches from the top

    @property
    def width(self) -> float:
        return PAGE_SIZE[0] - 2 * MARGIN

    def body_rect(self) -> tuple[float, float, float, float]:
        """The body as (left, bottom, width, height) in figure fractions."""
        w, h = PAGE_SIZE
        return MARGIN / w, 1 - self.body_bottom / h, 1 - 2 * MARGIN / w, (self.body_bottom - self.body_top) / h


@dataclass
class Bands:
    """A page's wrapped heading, subheading and caption lines, and its body's top and bottom (inches from the top)."""

    heading: list[str]
    subheading: list[str]
    caption: list[str]
    top: float
    bottom: float

    @property
    def room(self) -> float:
        return self.bottom - self.top


def bands(heading: str, subheading: str = "", caption: str = "") -> Bands:
    width = PAGE_SIZE[0] - 2 * MARGIN
    head, sub = wrap(heading, width, 12, "bold"), wrap(subheading, width, 8.5) if subheading else []
    cap = wrap(caption, width, 7.5) if caption else []
    top = TOP + len(head) * 12 * LINE / 72 + (0.02 + len(sub) * 8.5 * LINE / 72 if sub else 0)
    bottom = PAGE_SIZE[1] - FOOTER - len(cap) * 7.5 * LINE / 72
    return Bands(head, sub, cap, top + 0.12, bottom - 0.08)


def new_page(heading: str, subheading: str = "", caption: str = "", *, axes: bool = False) -> Page:
    """A page whose heading and caption are laid out first; with ``axes`` the body is handed to matplotlib's
    constrained layout, which keeps panel titles, labels and legends inside it."""
    fig = new_figure(PAGE_SIZE, layout="constrained" if axes else None)
    b = bands(heading, subheading, caption)
    y = text_block(fig, MARGIN, TOP, b.heading, 12, weight="bold")
    text_block(fig, MARGIN, y + 0.02, b.subheading, 8.5, color="0.2")
    text_block(fig, MARGIN, b.bottom + 0.08, b.caption, 7.5, color="0.15")
    page = Page(fig, b.top, b.bottom)
    if axes:
        fig.get_layout_engine().set(rect=page.body_rect(), h_pad=0.06, w_pad=0.06)
    return page


def stamp(fig: Figure, scale: str, page: int, total: int) -> None:
    """Footer with the page number; a red "<profile>-scale: not comparable to the paper" banner when ``scale``."""
    fig.text(1 - MARGIN / PAGE_SIZE[0], 0.1 / PAGE_SIZE[1], f"{SUITE_NAME} · page {page} of {total}", ha="right",
             va="bottom", fontsize=7, color="0.4")
    if scale:
        fig.text(1 - MARGIN / PAGE_SIZE[0], 1 - 0.08 / PAGE_SIZE[1], f"{scale}: not comparable to the paper",
                 ha="right", va="top", fontsize=9, color="tab:red", weight="bold")


# -------------------------------------------------------------------------------------------------------- tables

@dataclass
class Table:
    """Header and rows of strings, column widths as fractions of the page width; ``groups`` marks the rows that
    start a new group (a thin rule above them)."""

    header: list[str]
    rows: list[list[str]]
    widths: list[float]
    size: float = 8.0
    groups: list[bool] | None = None
    colors: dict[str, str] | None = None  # text colour of cells that read exactly a key (verdicts)

    def _cells(self, row: list[str], width: float, weight: str = "normal") -> list[list[str]]:
        return [wrap(text, width * w - 0.1, self.size, weight) for text, w in zip(row, self.widths)]

    def row_height(self, row: list[str], width: float, weight: str = "normal") -> float:
        return max(map(len, self._cells(row, width, weight))) * self.size * LINE / 72 + 2 * PAD

    def height(self, width: float, rows: range) -> float:
        return self.row_height(self.header, width, "bold") + sum(self.row_height(self.rows[i], width) for i in rows)

    def split(self, width: float, first: float, rest: float) -> list[range]:
        """Row ranges that fit ``first`` inches on the first page and ``rest`` on each further one (header
        repeated on each)."""
        header = self.row_height(self.header, width, "bold")
        chunks, start, used, room = [], 0, header, first
        for i, row in enumerate(self.rows):
            h = self.row_height(row, width)
            if used + h > room and i > start:
                chunks.append(range(start, i))
                start, used, room = i, header, rest
            used += h
        chunks.append(range(start, len(self.rows)))
        return chunks

    def draw(self, fig: Figure, y: float, width: float, rows: range | None = None) -> float:
        """Draw the header and ``rows`` from ``y`` inches below the top; returns the y below the table."""
        rows = range(len(self.rows)) if rows is None else rows
        y = self._draw_row(fig, y, width, self.header, "bold", fill="0.85")
        for n, i in enumerate(rows):
            if self.groups is not None and self.groups[i] and n:
                _rule(fig, y, width, "0.5")
            y = self._draw_row(fig, y, width, self.rows[i], "normal", fill="0.96" if n % 2 else None)
        _rule(fig, y, width, "0.3")
        return y

    def _draw_row(self, fig: Figure, y: float, width: float, row: list[str], weight: str, fill) -> float:
        w, h = PAGE_SIZE
        height = self.row_height(row, width, weight)
        if fill:
            fig.patches.append(_rect(fig, MARGIN / w, 1 - (y + height) / h, width / w, height / h, fill))
        x = MARGIN
        for text, lines, frac in zip(row, self._cells(row, width, weight), self.widths):
            color = (self.colors or {}).get(text, "black")
            text_block(fig, x + 0.05, y + PAD, lines, self.size, weight=weight, color=color)
            x += width * frac
        return y + height


def _rect(fig: Figure, x: float, y: float, w: float, h: float, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, transform=fig.transFigure, facecolor=color, edgecolor="none", zorder=-1)


def _rule(fig: Figure, y: float, width: float, color) -> None:
    w, h = PAGE_SIZE
    fig.add_artist(_line(fig, MARGIN / w, (MARGIN + width) / w, 1 - y / h, color))


def _line(fig: Figure, x0: float, x1: float, y: float, color):
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color=color, linewidth=0.6)


# ---------------------------------------------------------------------------------------------- flowing text

@dataclass
class Block:
    """A titled block of monospaced text (a resolved manifest) for ``flow_columns``."""

    title: str
    lines: list[str]


def flow_columns(blocks: list[Block], columns: int, height: float, size: float = 6.0) -> list[list[list[tuple]]]:
    """Lay ``blocks`` out in ``columns`` columns of ``height`` inches per page; a block continues into the next
    column, its title repeated with "(continued)". Returns pages -> columns -> [(text, is_title)]."""
    per_column = int(height * 72 / (size * LINE))
    width = (PAGE_SIZE[0] - 2 * MARGIN) / columns - 0.15
    pages, column = [[]], []

    def next_column():
        nonlocal column
        pages[-1].append(column)
        column = []
        if len(pages[-1]) == columns:
            pages.append([])

    for block in blocks:
        lines = [ln for raw in block.lines for ln in wrap(raw, width, size, family=MONO)]
        if column and len(column) + 4 > per_column:  # a title never sits alone at the foot of a column
            next_column()
        column.append((block.title, True))
        for line in lines:
            if len(column) == per_column:
                next_column()
                column.append((f"{block.title} (continued)", True))
            column.append((line, False))
        column.append(("", False))
    if column:
        next_column()
    return [p for p in pages if p]


def draw_columns(fig: Figure, y: float, columns: list[list[tuple]], size: float = 6.0) -> None:
    """Draw the columns of one page from ``y`` inches below the top."""
    width = (PAGE_SIZE[0] - 2 * MARGIN) / max(len(columns), 1)
    for i, column in enumerate(columns):
        x = MARGIN + i * width
        for n, (text, title) in enumerate(column):
            text_block(fig, x, y + n * size * LINE / 72, [text], size, family="sans-serif" if title else MONO,
                       weight="bold" if title else "normal")
