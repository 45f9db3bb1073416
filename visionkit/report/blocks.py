"""HTML building blocks for report sections: inline images, tables, bars, notes.

A plugin builds its :class:`~visionkit.report.ReportSection` from these so that its part of the
page stays self-contained (images as ``data:`` URIs, nothing fetched) and is styled like the rest.
Every text argument is escaped here; only the ``*_html`` arguments are inserted as they are.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

esc = html.escape

ImageLike = Union["PIL.Image.Image", bytes, Path]  # noqa: F821  (PIL is imported when used)


def png_bytes(image: ImageLike) -> tuple[bytes, tuple[int, int]]:
    """PNG bytes and (width, height) of a PIL image, a PNG/JPEG file or encoded bytes."""
    from PIL import Image

    if isinstance(image, Path):
        image = image.read_bytes()
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as img:
            if img.format == "PNG":
                return image, img.size
            image = img.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # optimize=True: 7x the time for 1% smaller
    return buf.getvalue(), image.size


def img(image: ImageLike, alt: str, css_class: str = "") -> str:
    """``<img>`` with the picture inline, its natural size given (no layout shift, scaled down
    to the screen by CSS)."""
    data, (width, height) = png_bytes(image)
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return (f'<img{cls} src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" '
            f'width="{width}" height="{height}" alt="{esc(alt)}">')


def figure(inner_html: str, caption: str = "", caption_html: str = "") -> str:
    text = caption_html or esc(caption)
    return f"<figure>{inner_html}{f'<figcaption>{text}</figcaption>' if text else ''}</figure>"


def gallery(figures: Iterable[str], wide: bool = False) -> str:
    """Figures in a grid that reflows to one column on a narrow screen."""
    return f'<div class="gallery{" wide" if wide else ""}">{"".join(figures)}</div>'


def charts(items: Iterable[str]) -> str:
    return f'<div class="charts">{"".join(i for i in items if i)}</div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def heading(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def cell(value: Any, digits: int = 4) -> str:
    """A table cell's text: floats rounded, None as an en dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Optional[Sequence[bool]] = None,
          css_class: str = "") -> str:
    """A table that scrolls sideways on its own when too wide for the screen."""
    numeric = list(numeric) if numeric is not None else None
    head = "".join(f'<th{_num(numeric, i)}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{_num(numeric, i)}>{esc(cell(v))}</td>' for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _num(numeric: Optional[list[bool]], i: int) -> str:
    return ' class="num"' if numeric and i < len(numeric) and numeric[i] else ""


def facts(items: Iterable[tuple[str, str]]) -> str:
    """Label / value pairs, two columns on a wide screen, stacked on a phone."""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v not in (None, ""))
    return f'<dl class="facts">{rows}</dl>'


def bars(items: Iterable[tuple[str, Optional[float], str]], scale: float = 1.0,
         colours: Optional[Sequence[tuple[int, int, int]]] = None, missing: str = "n/a") -> str:
    """Horizontal bars, one per ``(label, value, extra text)``: a value of None shows ``missing``.
    HTML rather than an image, so labels stay sharp and selectable at any width."""
    rows = []
    for k, (label, value, extra) in enumerate(items):
        colour = colours[k] if colours else None
        style = f"background:rgb{tuple(int(c) for c in colour)};" if colour else ""
        if value is None:
            bar, shown = "", missing
        else:
            share = max(0.0, min(1.0, value / scale)) if scale else 0.0
            bar, shown = f'<b style="{style}width:{share * 100:.1f}%"></b>', f"{value:.3f}"
        rows.append(f'<tr><th>{esc(label)}</th><td class="bar">{bar}</td><td class="num">{esc(shown)}</td>'
                    f'<td class="extra">{esc(extra)}</td></tr>')
    return f'<div class="scroll"><table class="bars"><tbody>{"".join(rows)}</tbody></table></div>'


def swatches(items: Iterable[tuple[str, tuple[int, int, int]]]) -> str:
    """A colour legend: class name beside its colour."""
    spans = "".join(f'<span><i style="background:rgb{tuple(int(c) for c in colour)}"></i>{esc(name)}</span>'
                    for name, colour in items)
    return f'<div class="legend">{spans}</div>'


def details(summary: str, inner_html: str, open_: bool = False) -> str:
    return f'<details{" open" if open_ else ""}><summary>{esc(summary)}</summary>{inner_html}</details>'


def heat_table(matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str],
               corner: str = "", shade: Optional[Sequence[Sequence[float]]] = None) -> str:
    """A matrix as a table whose cells are shaded by ``shade`` (0..1; default: the values over
    the largest): a confusion matrix that stays text, so it reads at any size."""
    top = max((max(row) for row in matrix if len(row)), default=0) or 1
    head = f'<th class="corner">{esc(corner)}</th>' + "".join(f'<th class="col">{esc(c)}</th>' for c in col_labels)
    body = []
    for i, (label, row) in enumerate(zip(row_labels, matrix)):
        cells = []
        for j, value in enumerate(row):
            level = shade[i][j] if shade is not None else value / top
            level = max(0.0, min(1.0, float(level)))
            # Blues: white to dark blue; white text on the dark half
            r, g, b = (int(247 - level * (247 - 8)), int(251 - level * (251 - 48)), int(255 - level * (255 - 107)))
            colour = "#fff" if level > 0.5 else "#111"
            cells.append(f'<td class="num" style="background:rgb({r},{g},{b});color:{colour}">{esc(cell(value))}</td>')
        body.append(f"<tr><th>{esc(label)}</th>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="heat"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')
