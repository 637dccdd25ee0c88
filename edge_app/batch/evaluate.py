"""Accuracy of classify records against ground truth from folders, file names or a CSV."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from edge_app.errors import ConfigError

_ID_PREFIX = re.compile(r"^[A-Za-z]?\d+_")
TRUTH_MODES = ("auto", "folder", "filename")


def normalise(text: str) -> str:
    return " ".join(text.replace("_", " ").lower().split())


class LabelMatcher:
    """Maps a class name to label indices: first synonym of a label first, then any."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.first: dict[str, set[int]] = defaultdict(set)
        self.any: dict[str, set[int]] = defaultdict(set)
        for index, label in enumerate(labels):
            synonyms = [normalise(s) for s in label.split(",") if s.strip()]
            if not synonyms:
                continue
            self.first[synonyms[0]].add(index)
            self.first[normalise(label)].add(index)
            for synonym in synonyms:
                self.any[synonym].add(index)

    def match(self, name: str) -> set[int]:
        key = normalise(name)
        return set(self.first.get(key) or self.any.get(key) or ())


def name_from_filename(path: str) -> str:
    return _ID_PREFIX.sub("", Path(path).name.split(".")[0], count=1)


def name_from_folder(path: str) -> str:
    return _ID_PREFIX.sub("", Path(path).parent.name, count=1)


class TruthSource:
    def __init__(self, mode: str, matcher: LabelMatcher, csv_path: Path | None = None):
        self.mode = mode
        self.matcher = matcher
        self.table: dict[str, str] = {}
        if csv_path is not None:
            self.table = _read_truth_csv(csv_path)

    def truth(self, path: str) -> tuple[str | None, set[int]]:
        """(the truth's name as found, matching label indices) for one image."""
        if self.table:
            name = self.table.get(path) or self.table.get(Path(path).name)
            if name is None:
                return None, set()
            if name.strip().isdigit():
                index = int(name)
                ok = 0 <= index < len(self.matcher.labels)
                return name, {index} if ok else set()
            return name, self.matcher.match(name)
        candidates = {
            "folder": [name_from_folder(path)],
            "filename": [name_from_filename(path)],
            "auto": [name_from_folder(path), name_from_filename(path)],
        }[self.mode]
        for name in candidates:
            indices = self.matcher.match(name)
            if indices:
                return name, indices
        return candidates[-1], set()


def _read_truth_csv(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    except OSError as exc:
        raise ConfigError(f"cannot read truth CSV {path}: {exc.strerror or exc}") from exc
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename"):
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows, 1) if len(row) < 2]
    if bad:
        raise ConfigError(f"truth CSV {path}: row {bad[0]} needs two columns: path,label")
    return {row[0].strip(): row[1].strip() for row in rows}


@dataclass
class EvalReport:
    images: int = 0
    failed: int = 0
    no_truth: int = 0
    evaluated: int = 0
    top1: int = 0
    top5: int = 0
    per_class: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    confusions: Counter = field(default_factory=Counter)
    unmatched_examples: list[str] = field(default_factory=list)
    # (path, truth class, predicted class, its score, truth within the top-5) per miss
    misses: list[tuple[str, str, str, float, bool]] = field(default_factory=list)
    class_confusions: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, record: dict, truth_name: str | None, truth: set[int], labels: list[str]):
        self.images += 1
        if not record["ok"]:
            self.failed += 1
            return
        if not truth:
            self.no_truth += 1
            if len(self.unmatched_examples) < 5:
                self.unmatched_examples.append(f"{record['path']} ({truth_name!r})")
            return
        self.evaluated += 1
        top = [p["index"] for p in record["top"]]
        class_name = labels[min(truth)].split(",")[0]
        stats = self.per_class[class_name]
        stats[1] += 1
        if top and top[0] in truth:
            self.top1 += 1
            stats[0] += 1
        elif top:
            predicted = record["top"][0]["label"].split(",")[0]
            self.confusions[(class_name, predicted)] += 1
            self.class_confusions[class_name][predicted] += 1
            in_top5 = bool(truth & set(top[:5]))
            self.misses.append(
                (record["path"], class_name, predicted, record["top"][0]["score"], in_top5)
            )
        if truth & set(top[:5]):
            self.top5 += 1

    @property
    def one_photo_per_class(self) -> bool:
        """True when most classes have a single photo: per-class accuracy is then 0 or
        100 % and ranking classes by it says nothing, so single mistakes are listed."""
        counts = sorted(n for _, n in self.per_class.values())
        return bool(counts) and counts[len(counts) // 2] < 2

    def to_json(self, worst: int = 10) -> dict:
        def pct(n: int) -> float:
            return round(100.0 * n / self.evaluated, 2) if self.evaluated else 0.0

        # Only classes with a miss are "worst" at all. Lowest recall first; among equals
        # more misses, then the most confident wrong answer (with one photo per class
        # every miss is 0/1, and a confident mistake says more than the alphabet).
        confidence: dict[str, float] = defaultdict(float)
        for _, truth_class, _, score, _ in self.misses:
            confidence[truth_class] = max(confidence[truth_class], score)
        worst_classes = sorted(
            ((name, cn) for name, cn in self.per_class.items() if cn[0] < cn[1]),
            key=lambda kv: (
                kv[1][0] / kv[1][1],
                -(kv[1][1] - kv[1][0]),
                -confidence[kv[0]],
                kv[0],
            ),
        )[:worst]
        # The most confident mistakes first: those are the ones worth a look.
        misses = sorted(self.misses, key=lambda m: (-m[3], m[0]))[:worst]
        return {
            "images": self.images,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "no_truth": self.no_truth,
            "top1": pct(self.top1),
            "top5": pct(self.top5),
            "top1_correct": self.top1,
            "top5_correct": self.top5,
            "one_photo_per_class": self.one_photo_per_class,
            "worst_classes": [
                {
                    "class": name,
                    "correct": c,
                    "images": n,
                    "accuracy": round(100.0 * c / n, 1),
                    "confused_with": [
                        {"predicted": p, "count": k}
                        for p, k in self.class_confusions[name].most_common(3)
                    ],
                }
                for name, (c, n) in worst_classes
            ],
            "misclassified": [
                {
                    "path": path,
                    "truth": truth,
                    "predicted": predicted,
                    "score": round(score, 4),
                    "truth_in_top5": in_top5,
                }
                for path, truth, predicted, score, in_top5 in misses
            ],
            "confusions": [
                {"truth": t, "predicted": p, "count": n}
                for (t, p), n in self.confusions.most_common(worst)
            ],
        }
