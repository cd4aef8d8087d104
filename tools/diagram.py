#!/usr/bin/env python3
"""Draws a box-and-arrow diagram from a small text source into an SVG, deterministically.

    python3 tools/diagram.py            writes docs/pipeline.svg from docs/pipeline.diagram
    python3 tools/diagram.py --check    exits 1 if docs/pipeline.svg is not what the source draws
    python3 tools/diagram.py SRC OUT    another source and picture (--check works the same)

The source, one statement a line (lines starting with `#`, and blank lines, are ignored):

    node ID "Label"                  a box; `\\n` in a label breaks the line
    row N: ID ID - ID                the boxes of row N (0 at the top), left to right; `-` leaves
                                     a column empty so that boxes line up in columns
    edge FROM TO "label" [options]   an arrow from box FROM to box TO; the label may be ""
        dashed                       draw it dashed
        bend=PIXELS                  curve it, pulled toward a point this far to the left of
                                     the straight arrow's middle (negative: to the right)
        at=FRACTION                  where along the arrow the label sits (0.5, the middle, unless
                                     set)

Columns are as wide as their widest box, rows as tall as their tallest; the gap between two
neighbouring columns (or rows) widens to fit the label of an arrow joining them. Boxes have a
white fill and a dark stroke, and the picture has a white background, so it reads the same on
light and dark pages. Only the Python 3 standard library is used, and the same source always
gives the same bytes.
"""

import math
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "docs" / "pipeline.diagram"
DEFAULT_OUTPUT = ROOT / "docs" / "pipeline.svg"

FONT = "Helvetica, Arial, sans-serif"
FONT_SIZE = 13
LABEL_SIZE = 11
CHAR_W = 7.0  # an estimate of one character's width at FONT_SIZE (no font metrics here)
LABEL_CHAR_W = 6.0
LINE_H = 16
LABEL_LINE_H = 13
BOX_PAD_X = 12
BOX_PAD_Y = 9
MIN_BOX_W = 80
MIN_GAP_X = 32
MIN_GAP_Y = 44
MARGIN = 16
INK = "#1f2328"
EDGE = "#57606a"


class DiagramError(Exception):
    pass


def parse(text):
    nodes, rows, edges = {}, {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        m = re.match(r"row\s+(\d+)\s*:\s*(.*)$", line)
        if m:
            r = int(m.group(1))
            if r in rows:
                raise DiagramError(f"{where}: row {r} is given twice")
            rows[r] = m.group(2).split()
            continue
        try:
            words = shlex.split(line, posix=True)
        except ValueError as e:
            raise DiagramError(f"{where}: {e}") from None
        if words[0] == "node":
            if len(words) != 3:
                raise DiagramError(f'{where}: expected node ID "Label"')
            ident, label = words[1], words[2]
            if ident in nodes:
                raise DiagramError(f"{where}: node {ident} is declared twice")
            nodes[ident] = label.replace("\\n", "\n")
        elif words[0] == "edge":
            if len(words) < 4:
                raise DiagramError(f'{where}: expected edge FROM TO "label" [options]')
            edge = {
                "from": words[1],
                "to": words[2],
                "label": words[3].replace("\\n", "\n"),
                "dashed": False,
                "bend": 0.0,
                "at": 0.5,
                "where": where,
            }
            for option in words[4:]:
                name, _, value = option.partition("=")
                if option == "dashed":
                    edge["dashed"] = True
                elif name in ("bend", "at") and value:
                    try:
                        edge[name] = float(value)
                    except ValueError:
                        raise DiagramError(
                            f"{where}: {name}= takes a number, not {value!r}"
                        ) from None
                else:
                    raise DiagramError(f"{where}: unknown option {option!r}")
            edges.append(edge)
        else:
            raise DiagramError(f"{where}: expected node, row or edge, not {words[0]!r}")
    placed = {}
    for r, idents in rows.items():
        for c, ident in enumerate(idents):
            if ident == "-":
                continue
            if ident not in nodes:
                raise DiagramError(f"row {r}: {ident} is not a declared node")
            if ident in placed:
                raise DiagramError(f"row {r}: {ident} is placed twice")
            placed[ident] = (r, c)
    for ident in nodes:
        if ident not in placed:
            raise DiagramError(f"node {ident} is in no row")
    for e in edges:
        for end in ("from", "to"):
            if e[end] not in nodes:
                raise DiagramError(f"{e['where']}: {e[end]} is not a declared node")
        if e["from"] == e["to"]:
            raise DiagramError(f"{e['where']}: an edge needs two different nodes")
    return nodes, placed, edges


def box_size(label):
    lines = label.split("\n")
    w = max(MIN_BOX_W, max(len(s) for s in lines) * CHAR_W + 2 * BOX_PAD_X)
    h = len(lines) * LINE_H + 2 * BOX_PAD_Y
    return w, h


def label_size(label):
    if not label:
        return 0.0, 0.0
    lines = label.split("\n")
    return max(len(s) for s in lines) * LABEL_CHAR_W + 8, len(lines) * LABEL_LINE_H + 4


def layout(nodes, placed, edges):
    """Each box's centre and size: columns as wide as their widest box, rows as tall as their
    tallest, gaps widened for the label of an arrow between neighbours."""
    n_rows = max(r for r, _ in placed.values()) + 1
    n_cols = max(c for _, c in placed.values()) + 1
    col_w, row_h = [0.0] * n_cols, [0.0] * n_rows
    for ident, (r, c) in placed.items():
        w, h = box_size(nodes[ident])
        col_w[c] = max(col_w[c], w)
        row_h[r] = max(row_h[r], h)
    gap_x, gap_y = [MIN_GAP_X] * n_cols, [MIN_GAP_Y] * n_rows
    for e in edges:
        (r1, c1), (r2, c2) = placed[e["from"]], placed[e["to"]]
        lw, lh = label_size(e["label"])
        if r1 == r2 and abs(c1 - c2) == 1 and not e["bend"]:
            gap_x[min(c1, c2)] = max(gap_x[min(c1, c2)], lw + 16)
        if c1 == c2 and abs(r1 - r2) == 1 and not e["bend"]:
            gap_y[min(r1, r2)] = max(gap_y[min(r1, r2)], lh + 16)
    xs, x = [], MARGIN
    for c in range(n_cols):
        xs.append(x + col_w[c] / 2)
        x += col_w[c] + gap_x[c]
    ys, y = [], MARGIN
    for r in range(n_rows):
        ys.append(y + row_h[r] / 2)
        y += row_h[r] + gap_y[r]
    boxes = {}
    for ident, (r, c) in placed.items():
        w, h = box_size(nodes[ident])
        boxes[ident] = (xs[c], ys[r], w, h)
    return boxes


def clip(box, toward):
    """Where the line from the box's centre toward a point leaves the box."""
    cx, cy, w, h = box
    dx, dy = toward[0] - cx, toward[1] - cy
    if dx == 0 and dy == 0:
        return cx, cy
    t = min(
        (w / 2) / abs(dx) if dx else math.inf,
        (h / 2) / abs(dy) if dy else math.inf,
    )
    return cx + dx * t, cy + dy * t


def f(v):
    """A number as the SVG writes it: one decimal at most, the same on every machine."""
    s = f"{round(v, 1):.1f}"
    s = s[:-2] if s.endswith(".0") else s
    return "0" if s == "-0" else s


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def text_lines(x, y, lines, size, line_h, attrs=""):
    """Centred lines of text around (x, y); `attrs` go on each line (the first may be bolder)."""
    top = y - (len(lines) - 1) * line_h / 2
    return [
        f'<text x="{f(x)}" y="{f(top + i * line_h)}" font-size="{size}"{attrs} '
        f'text-anchor="middle" dominant-baseline="central">{esc(s)}</text>'
        for i, s in enumerate(lines)
    ]


def geometry(nodes, placed, edges):
    """Every box, arrow and label in layout coordinates (the canvas is fitted around them)."""
    boxes = layout(nodes, placed, edges)
    arrows, labels = [], []
    for e in edges:
        a, b = boxes[e["from"]], boxes[e["to"]]
        (ax, ay), (bx, by) = a[:2], b[:2]
        if e["bend"]:
            length = math.hypot(bx - ax, by - ay)
            # Left of the direction of travel, in SVG's downward-y coordinates.
            nx, ny = (by - ay) / length, -(bx - ax) / length
            cx, cy = (ax + bx) / 2 + nx * e["bend"], (ay + by) / 2 + ny * e["bend"]
            start, end = clip(a, (cx, cy)), clip(b, (cx, cy))
            points = [start, (cx, cy), end]
        else:
            start, end = clip(a, (bx, by)), clip(b, (ax, ay))
            points = [start, end]
        arrows.append((points, e["dashed"]))
        if e["label"]:
            lx, ly = point_at(points, e["at"])
            lw, lh = label_size(e["label"])
            labels.append((lx, ly, lw, lh, e["label"].split("\n")))
    return boxes, arrows, labels


def point_at(points, t):
    """The point a fraction t along a straight arrow, or on a curved one (quadratic Bezier)."""
    if len(points) == 2:
        (sx, sy), (ex, ey) = points
        return sx + (ex - sx) * t, sy + (ey - sy) * t
    (sx, sy), (cx, cy), (ex, ey) = points
    u = 1 - t
    return u * u * sx + 2 * u * t * cx + t * t * ex, u * u * sy + 2 * u * t * cy + t * t * ey


def render(text, source_name="docs/pipeline.diagram"):
    nodes, placed, edges = parse(text)
    boxes, arrows, labels = geometry(nodes, placed, edges)
    # Fit the canvas around everything drawn: boxes, labels, and the curves' bulges.
    xs, ys = [], []
    for cx, cy, w, h in boxes.values():
        xs += [cx - w / 2, cx + w / 2]
        ys += [cy - h / 2, cy + h / 2]
    for lx, ly, lw, lh, _ in labels:
        xs += [lx - lw / 2, lx + lw / 2]
        ys += [ly - lh / 2, ly + lh / 2]
    for points, _ in arrows:
        for i in range(21):
            x, y = point_at(points, i / 20)
            xs.append(x)
            ys.append(y)
    dx, dy = MARGIN - min(xs), MARGIN - min(ys)
    width, height = max(xs) + dx + MARGIN, max(ys) + dy + MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{f(width)}" height="{f(height)}" '
        f'viewBox="0 0 {f(width)} {f(height)}" font-family="{FONT}" role="img">',
        f"<!-- Drawn by tools/diagram.py from {esc(source_name)}: edit the source and run "
        "python3 tools/diagram.py, never this file. -->",
        "<defs>",
        f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        f'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE}"/></marker>',
        "</defs>",
        f'<rect x="0" y="0" width="{f(width)}" height="{f(height)}" rx="8" fill="#ffffff"/>',
    ]
    for points, dashed in arrows:
        p = [(x + dx, y + dy) for x, y in points]
        if len(p) == 2:
            d = f"M{f(p[0][0])},{f(p[0][1])} L{f(p[1][0])},{f(p[1][1])}"
        else:
            d = f"M{f(p[0][0])},{f(p[0][1])} Q{f(p[1][0])},{f(p[1][1])} {f(p[2][0])},{f(p[2][1])}"
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(
            f'<path d="{d}" fill="none" stroke="{EDGE}" stroke-width="1.5"{dash} '
            f'marker-end="url(#arrow)"/>'
        )
    for ident in sorted(boxes, key=lambda i: (placed[i], i)):
        cx, cy, w, h = boxes[ident]
        cx, cy = cx + dx, cy + dy
        out.append(
            f'<rect x="{f(cx - w / 2)}" y="{f(cy - h / 2)}" width="{f(w)}" height="{f(h)}" '
            f'rx="6" fill="#ffffff" stroke="{INK}" stroke-width="1.5"/>'
        )
        lines = nodes[ident].split("\n")
        # The first line names the box, in bold; the lines under it say more.
        top = cy - (len(lines) - 1) * LINE_H / 2
        out.extend(
            text_lines(cx, top, lines[:1], FONT_SIZE, LINE_H, f' fill="{INK}" font-weight="bold"')
        )
        if len(lines) > 1:
            out.extend(
                text_lines(cx, cy + LINE_H / 2, lines[1:], FONT_SIZE, LINE_H, f' fill="{INK}"')
            )
    # Labels last, on a white ground, so no line runs through their words.
    for lx, ly, lw, lh, lines in labels:
        lx, ly = lx + dx, ly + dy
        out.append(
            f'<rect x="{f(lx - lw / 2)}" y="{f(ly - lh / 2)}" width="{f(lw)}" height="{f(lh)}" '
            f'rx="3" fill="#ffffff"/>'
        )
        out.extend(
            text_lines(
                lx, ly, lines, LABEL_SIZE, LABEL_LINE_H, f' fill="{EDGE}" font-style="italic"'
            )
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def shown(path):
    """A path as the messages show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if any(a.startswith("-") for a in args) or len(args) not in (0, 2):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    source, output = (Path(args[0]), Path(args[1])) if args else (DEFAULT_SOURCE, DEFAULT_OUTPUT)
    try:
        svg = render(source.read_text(encoding="utf-8"), shown(source))
    except (OSError, DiagramError, ValueError) as e:
        print(f"{shown(source)}: {e}", file=sys.stderr)
        return 2
    if check:
        try:
            current = output.read_text(encoding="utf-8")
        except OSError as e:
            print(f"{shown(output)}: cannot be read ({e}); run python3 tools/diagram.py",
                  file=sys.stderr)
            return 1
        if current != svg:
            print(
                f"{shown(output)} is not what {shown(source)} draws: edit the source, then run "
                "python3 tools/diagram.py to redraw it",
                file=sys.stderr,
            )
            return 1
        print(f"{shown(output)} matches {shown(source)}")
        return 0
    output.write_text(svg, encoding="utf-8")
    print(f"wrote {shown(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
