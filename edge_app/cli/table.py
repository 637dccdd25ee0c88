"""The `classify` table for a terminal: aligned columns under a header, fitted to the width.

    image       prediction      score              time  also
    cat.jpg     tabby          87.3 %  ████████▋   4.9 ms  tiger cat 9 %, Egyptian cat 2 %
    broken.jpg  FAILED: truncated JPEG (no end-of-image marker)

Records stream in one at a time, so the column widths are fixed up front from the paths
to be shown (all known before the first image is classified) and the terminal width.
Paths are shown relative to the argument they came from, labels as their first synonym,
and predictions follow the human rule of :func:`edge_app.results.human_top` (no
``background``, nothing below 1 %, "uncertain" when nothing is left). Machine formats
(JSONL, CSV) are written by ``edge_app.batch.records`` and are not touched by this.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import TextIO

from edge_app.results import UNCERTAIN, human_top

GAP = "  "
SCORE_WIDTH = 7  # "100.0 %"
MS_WIDTH = 8  # "123.4 ms"
PATH_MIN, PATH_MAX_SHARE = 12, 0.4  # the path column: at least 12, at most 40 % of the width
LABEL_MIN, LABEL_MAX = 10, 22
ALSO_MIN = 16  # the runner-up column is left out when narrower than this
BAR_CELLS = 10
EIGHTHS = " ▏▎▍▌▋▊▉"


def short_label(label: str) -> str:
    """The first synonym of an ImageNet label line ("tabby, tabby cat" -> "tabby")."""
    return label.split(",", 1)[0].strip()


def display_path(path: str, arguments: Iterable[str]) -> str:
    """``path`` relative to the command-line argument it was found under (a folder or a
    glob's folder part); a file named directly is shown as it was typed."""
    best = None
    for argument in arguments:
        root = os.path.normpath(_glob_root(argument))
        if root == ".":
            prefix = ""
        else:
            prefix = root.rstrip(os.sep) + os.sep
        if prefix and not os.path.normpath(path).startswith(prefix):
            continue
        if best is None or len(prefix) > len(best):
            best = prefix
    if best is None:
        return path
    relative = os.path.normpath(path)[len(best) :]
    return relative or os.path.basename(path)


def _glob_root(argument: str) -> str:
    """The folder a path argument lists: the part before the first wildcard for a glob,
    else the argument itself (a file argument is the prefix of no other path)."""
    if any(c in argument for c in "*?["):
        head = []
        for part in argument.split(os.sep):
            if any(c in part for c in "*?["):
                break
            head.append(part)
        return os.sep.join(head) or "."
    return argument


def score_bar(score: float, cells: int = BAR_CELLS, unicode: bool = True) -> str:
    """A bar ``cells`` wide for a score in 0..1 (eighth-cell steps in Unicode, else #)."""
    score = min(max(score, 0.0), 1.0)
    if not unicode:
        filled = int(round(score * cells))
        return "#" * filled + " " * (cells - filled)
    eighths = int(round(score * cells * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (EIGHTHS[part] if part and full < cells else "")
    return text.ljust(cells)


def fit(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to ``width`` columns, the cut marked."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - len(ellipsis))] + ellipsis[:width]


class ClassifyTable:
    """A record writer (``write``/``close``) printing the table; see the module docstring."""

    def __init__(
        self,
        stream: TextIO,
        arguments: Iterable[str],
        paths: Iterable[str],
        width: int | None = None,
        before_line=None,
    ):
        """``arguments`` are the command's PATH arguments, ``paths`` every path to be
        written (for the path column's width); ``width`` defaults to the terminal's.
        ``before_line`` is called before each line (e.g. to erase a progress bar)."""
        self.stream = stream
        self.arguments = list(arguments)
        self.width = width or shutil.get_terminal_size((100, 24)).columns
        self.before_line = before_line
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.unicode = encoding in ("utf8", "utf16", "utf32")
        self.ellipsis = "…" if self.unicode else "~"
        shown = [display_path(p, self.arguments) for p in paths]
        self._columns(max((len(p) for p in shown), default=5))
        self._header_written = False

    def _columns(self, longest_path: int) -> None:
        """Column widths for the terminal: path, label and score always; then, while they
        fit, the score bar, the runner-up predictions and the time, in that order."""
        width = self.width - 1  # never the last column: some terminals wrap there
        gap = len(GAP)
        self.path_w = max(PATH_MIN, min(longest_path, int(width * PATH_MAX_SHARE)))
        self.label_w = LABEL_MAX
        over = self.path_w + gap + self.label_w + gap + SCORE_WIDTH - width
        if over > 0:  # narrow: labels give way first, then paths
            cut = min(over, self.label_w - LABEL_MIN)
            self.label_w -= cut
            self.path_w = max(PATH_MIN, self.path_w - (over - cut))
        used = self.path_w + gap + self.label_w + gap + SCORE_WIDTH
        self.show_bar = used + gap + BAR_CELLS <= width
        used += (gap + BAR_CELLS) if self.show_bar else 0
        self.show_ms = used + gap + MS_WIDTH + gap + ALSO_MIN <= width
        used += (gap + MS_WIDTH) if self.show_ms else 0
        self.also_w = width - used - gap if used + gap + ALSO_MIN <= width else 0

    # -- lines ------------------------------------------------------------------------
    def header(self) -> str:
        cells = [
            "image".ljust(self.path_w),
            "prediction".ljust(self.label_w),
            "score".rjust(SCORE_WIDTH),
        ]
        if self.show_bar:
            cells.append(" " * BAR_CELLS)
        if self.show_ms:
            cells.append("time".rjust(MS_WIDTH))
        if self.also_w:
            cells.append("also")
        return GAP.join(cells).rstrip()

    def line(self, record: dict) -> str:
        path = fit(display_path(record["path"], self.arguments), self.path_w, self.ellipsis)
        path = path.ljust(self.path_w)
        if not record["ok"]:
            rest = self.width - 1 - self.path_w - len(GAP)
            return f"{path}{GAP}{fit('FAILED: ' + record['error'], rest, self.ellipsis)}"
        shown = human_top(record.get("top", []))
        if shown:
            best = shown[0]
            label, score = short_label(best["label"]), best["score"]
            score_text = f"{score * 100:5.1f} %"
            bar = score_bar(score, BAR_CELLS, self.unicode)
        else:
            label, score_text, bar = UNCERTAIN, "", ""
        cells = [
            path,
            fit(label, self.label_w, self.ellipsis).ljust(self.label_w),
            score_text.rjust(SCORE_WIDTH),
        ]
        if self.show_bar:
            cells.append(bar.ljust(BAR_CELLS))
        if self.show_ms:
            ms = record.get("inference_ms")
            cells.append((f"{ms:.1f} ms" if ms is not None else "").rjust(MS_WIDTH))
        if self.also_w and len(shown) > 1:
            also = ", ".join(
                f"{short_label(p['label'])} {p['score'] * 100:.0f} %" for p in shown[1:]
            )
            cells.append(fit(also, self.also_w, self.ellipsis))
        return GAP.join(cells).rstrip()

    # -- the writer interface -----------------------------------------------------------
    def _emit(self, text: str) -> None:
        if self.before_line is not None:
            self.before_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def write(self, record: dict) -> None:
        if not self._header_written:
            self._emit(self.header())
            self._header_written = True
        self._emit(self.line(record))

    def close(self) -> None:
        self.stream.flush()
