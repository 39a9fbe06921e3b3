"""svgchart: charts as inline SVG text, drawn by Python alone.

The bench's and the lab's pages embed these in their HTML, so that a page
is one file that reads offline, with no script, no font and no program
(gnuplot) to install. Two kinds:

  hbars(...)  categories as horizontal bars (a design, a variant): a value
              each, optionally split in stacked parts (user and system
              CPU), a whisker for the spread of the rounds, and vertical
              threshold lines (an expectation's bound);
  lines(...)  series of (x, y) points joined by lines, linear or log
              axes, a whisker per point for its spread, and horizontal
              threshold lines.

Each returns `<svg class="chart" ...>`; every drawn value is an element of
class "mark" with a <title> saying its value (a tooltip), so that a test
can count what a chart shows. Missing values (None) are left out and said
so under the bar's label.
"""

import html
import math

# Colours a reader with a common colour deficiency can still tell apart
# (Okabe and Ito), then darker tones of the same.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#004C7A", "#9C6B00", "#006B4F", "#8C4F73"]
FONT = "font-family:sans-serif"


def esc(s):
    return html.escape(str(s), quote=True)


def num(v):
    """A value as a tick or a tooltip shows it: 3 significant figures,
    thousands separated."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    if a >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    if a == 0:
        return "0"
    return f"{v:.3g}"


def nice_ticks(lo, hi, n=5):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering
    lo..hi, about n of them."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, k = [], 0
    while not ticks or ticks[-1] < hi - step * 1e-9:  # the last tick at or past hi
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def log_ticks(lo, hi):
    """Powers of ten covering lo..hi (both > 0)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    return [10.0 ** k for k in range(a, b + 1)]


class Scale:
    """Maps values to pixels, linear or logarithmic."""

    def __init__(self, lo, hi, p0, p1, log=False):
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if self.hi == self.lo:
            self.hi = self.lo + 1
        self.p0, self.p1 = p0, p1

    def __call__(self, v):
        if self.log:
            v = math.log10(max(v, 10 ** self.lo))
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _text(x, y, s, anchor="start", size=11, extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'style="{FONT}"{extra}>{esc(s)}</text>')


def _threshold_labels(thresholds):
    return [(float(v), str(label), bool(held) if held is not None else None)
            for v, label, held in ((t + (None,))[:3] for t in thresholds) if v is not None]


def hbars(title, unit, bars, thresholds=(), parts=None, width=760):
    """Horizontal bars. bars: [(label, value or [part values], (lo, hi) or
    None)], drawn in that order; with parts (names of the stacked parts, in
    order) each value is a list of part values, stacked left to right, the
    bar's total their sum. (lo, hi) draws a whisker: the spread of the
    rounds around the kept value. thresholds: [(value, label[, held])]
    drawn as vertical dashed lines (green held, red did not, grey unknown).
    Returns the SVG text."""
    th = _threshold_labels(thresholds)
    row_h, top, left, right = 26, 40, 200, 90
    legend_h = 20 if parts else 0
    th_h = 16 * len(th)
    height = top + legend_h + row_h * max(1, len(bars)) + 34 + th_h
    totals = []
    for _label, v, spread in bars:
        tot = sum(x for x in v if x is not None) if isinstance(v, (list, tuple)) else v
        totals.append(tot)
        if spread:
            totals.append(spread[1])
    vmax = max([t for t in totals if t is not None] + [t[0] for t in th] + [0])
    ticks = nice_ticks(0, vmax or 1)
    x = Scale(0, ticks[-1], left, width - right)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(width / 2, 20, title, "middle", 14, ' font-weight="bold"')]
    y0 = top + legend_h
    plot_bottom = y0 + row_h * max(1, len(bars))
    if parts:
        lx = left
        for i, name in enumerate(parts):
            out.append(f'<rect x="{lx}" y="{top - 6}" width="12" height="12" fill="{PALETTE[i]}"/>')
            out.append(_text(lx + 16, top + 4, name))
            lx += 30 + 7 * len(name)
    for t in ticks:
        px = x(t)
        out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{plot_bottom}" stroke="#e4e4e4"/>')
        out.append(_text(px, plot_bottom + 14, num(t), "middle", 10))
    out.append(_text((left + width - right) / 2, plot_bottom + 28, unit, "middle"))
    for i, (label, v, spread) in enumerate(bars):
        cy = y0 + row_h * i
        out.append(_text(left - 6, cy + row_h / 2 + 4, label, "end"))
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if all(p is None for p in vals):
            out.append(_text(left + 4, cy + row_h / 2 + 4, "no value", extra=' fill="#888"'))
            continue
        px = left
        for k, p in enumerate(vals):
            if p is None:
                continue
            w = x(p) - x(0)
            name = f"{parts[k]}: " if parts else ""
            colour = PALETTE[k] if parts else PALETTE[0]
            out.append(f'<rect class="mark" x="{px:.1f}" y="{cy + 4}" width="{max(w, 0.5):.1f}" '
                       f'height="{row_h - 8}" fill="{colour}"><title>{esc(label)}: {esc(name)}{num(p)} '
                       f'{esc(unit)}</title></rect>')
            px += w
        tot = sum(p for p in vals if p is not None)
        if spread and spread[0] is not None and spread[1] is not None:
            a, b, m = x(spread[0]), x(spread[1]), cy + row_h / 2
            out.append(f'<g class="spread" stroke="#222"><line x1="{a:.1f}" y1="{m}" x2="{b:.1f}" y2="{m}"/>'
                       f'<line x1="{a:.1f}" y1="{m - 5}" x2="{a:.1f}" y2="{m + 5}"/>'
                       f'<line x1="{b:.1f}" y1="{m - 5}" x2="{b:.1f}" y2="{m + 5}"/>'
                       f'<title>rounds: {num(spread[0])} to {num(spread[1])}</title></g>')
            px = max(px, b)
        out.append(_text(px + 4, cy + row_h / 2 + 4, num(tot), size=10))
    for j, (v, label, held) in enumerate(th):
        colour = {True: "#1a7f37", False: "#c62828", None: "#666"}[held]
        px = x(v)
        out.append(f'<line class="threshold" x1="{px:.1f}" y1="{y0 - 4}" x2="{px:.1f}" y2="{plot_bottom}" '
                   f'stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"><title>{esc(label)}: '
                   f'{num(v)} {esc(unit)}</title></line>')
        out.append(_text(px, y0 - 6, f"{label}", "middle", 10, f' fill="{colour}"'))
        out.append(_text(left, plot_bottom + 44 + 16 * j, f"{label}: {num(v)} {unit}", size=10,
                         extra=f' fill="{colour}"'))
    out.append("</svg>")
    return "\n".join(out)


def lines(title, xlabel, ylabel, series, logx=False, logy=False, xticks=None, thresholds=(), width=760,
          height=400, spectrum=False):
    """Series {name: [(x, y) or (x, y, lo, hi)]} as lines with points, a
    whisker from lo to hi where given. xticks: [(label, x)] instead of
    numbers. thresholds: [(y, label[, held])] as horizontal dashed lines.
    spectrum: each series is a distribution's curve (the line is the mark,
    no dot per point). Returns the SVG text."""
    series = {k: [p for p in v if p[1] is not None and (not logy or p[1] > 0) and (not logx or p[0] > 0)]
              for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    th = _threshold_labels(thresholds)
    left, right, top, bottom = 70, 170, 36, 50
    xs = [p[0] for v in series.values() for p in v] or [1]
    ys = [p[1] for v in series.values() for p in v] + [q for v in series.values() for p in v
                                                       for q in p[2:4] if q is not None]
    ys += [t[0] for t in th]
    ys = [y for y in ys if not logy or y > 0] or [1]
    if logx:
        xt = log_ticks(min(xs), max(xs))
        sx = Scale(xt[0], xt[-1], left, width - right, log=True)
    else:
        xt = nice_ticks(min(0, min(xs)), max(xs))
        sx = Scale(xt[0], xt[-1], left, width - right)
    if logy:
        yt = log_ticks(min(ys), max(ys))
        sy = Scale(yt[0], yt[-1], height - bottom, top, log=True)
    else:
        yt = nice_ticks(min(0, min(ys)), max(ys))
        sy = Scale(yt[0], yt[-1], height - bottom, top)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text((left + width - right) / 2, 20, title, "middle", 14, ' font-weight="bold"')]
    for t in yt:
        py = sy(t)
        out.append(f'<line x1="{left}" y1="{py:.1f}" x2="{width - right}" y2="{py:.1f}" stroke="#e4e4e4"/>')
        out.append(_text(left - 6, py + 4, num(t), "end", 10))
    for label, t in (xticks or [(num(t), t) for t in xt]):
        if logx and not (xt[0] <= t <= xt[-1]):
            continue
        px = sx(t)
        out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}" stroke="#e4e4e4"/>')
        out.append(_text(px, height - bottom + 14, label, "middle", 10))
    out.append(f'<rect x="{left}" y="{top}" width="{width - right - left}" height="{height - bottom - top}" '
               f'fill="none" stroke="#999"/>')
    out.append(_text((left + width - right) / 2, height - 12, xlabel, "middle"))
    out.append(_text(14, (top + height - bottom) / 2, ylabel, "middle",
                     extra=f' transform="rotate(-90 14 {(top + height - bottom) / 2:.1f})"'))
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        dash = "" if i < len(PALETTE) else ' stroke-dasharray="5 3"'
        path = " ".join(f"{'M' if k == 0 else 'L'}{sx(p[0]):.1f},{sy(p[1]):.1f}" for k, p in enumerate(pts))
        cls = ' class="mark"' if spectrum else ""
        out.append(f'<path{cls} d="{path}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.8"{dash}><title>{esc(name)}</title></path>')
        for p in pts:
            px, py = sx(p[0]), sy(p[1])
            if len(p) >= 4 and p[2] is not None and p[3] is not None:
                a, b = sy(p[2]), sy(p[3])
                out.append(f'<g class="spread" stroke="{colour}"><line x1="{px:.1f}" y1="{a:.1f}" x2="{px:.1f}" '
                           f'y2="{b:.1f}"/><line x1="{px - 4:.1f}" y1="{a:.1f}" x2="{px + 4:.1f}" y2="{a:.1f}"/>'
                           f'<line x1="{px - 4:.1f}" y1="{b:.1f}" x2="{px + 4:.1f}" y2="{b:.1f}"/>'
                           f'<title>{esc(name)}: rounds {num(p[2])} to {num(p[3])}</title></g>')
            if not spectrum:
                out.append(f'<circle class="mark" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                           f'<title>{esc(name)}: {num(p[0])}, {num(p[1])}</title></circle>')
        ly = top + 8 + 16 * i
        out.append(f'<line x1="{width - right + 10}" y1="{ly}" x2="{width - right + 30}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(_text(width - right + 34, ly + 4, name, size=10))
    for v, label, held in th:
        colour = {True: "#1a7f37", False: "#c62828", None: "#666"}[held]
        py = sy(v)
        out.append(f'<line class="threshold" x1="{left}" y1="{py:.1f}" x2="{width - right}" y2="{py:.1f}" '
                   f'stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"><title>{esc(label)}: {num(v)}'
                   f'</title></line>')
        out.append(_text(width - right - 4, py - 4, label, "end", 10, f' fill="{colour}"'))
    out.append("</svg>")
    return "\n".join(out)
