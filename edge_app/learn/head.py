"""A new classifier head in numpy: imprinting, then a regularised softmax.

Features are the base model's pooled embeddings as the model computes them (not
L2-normalised: the head must be one linear layer on that tensor so it can be quantised
into the model's own 1x1 convolution). Training runs on features divided by their mean
length, which keeps one step size right for every base model; the factor is folded back
into the weights, so the result applies to raw features.

* Imprinting (Qi et al. 2018): each class's weight starts as the mean of its examples'
  normalised embeddings, scaled.
* Then full-batch gradient descent with momentum on the softmax cross-entropy with
  weight decay.
* With ``base`` (``--keep-imagenet``) each new class is a mixture of the base classes
  its photos resemble (weights: the base model's mean probabilities on them), so its
  logit is that mixture of base logits, plus an offset that lets it win on most of its
  own photos. Neither training against the fixed base logits nor plain imprinting
  works without photos of the old classes: both make the new rows win everywhere
  (pooled features are all positive, so every class mean looks like every photo).
* An "unknown" class with a constant logit: it wins when no learned class reaches it.
  The constant is calibrated from cross-validated scores (see ``calibrate_unknown``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

IMPRINT_SCALE = 5.0
STEPS = 150
LEARNING_RATE = 2.0
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
# Share of genuine (cross-validated, correctly classified) photos the unknown threshold
# turns away. The top logit separates photos of the taught classes from unrelated ones
# only moderately (ROC area ~0.85 on ImageNet groups), so "unknown" is opt-in.
UNKNOWN_SPREADS = 2.33
UNKNOWN_MIN_SPREAD = 0.1  # of the median: a floor for sets whose logits barely differ
TEMPERATURES = np.geomspace(0.25, 8.0, 41)


@dataclass
class LinearHead:
    """logits = features @ weights.T + bias, on raw (model) features."""

    weights: np.ndarray  # float32 [classes, features]
    bias: np.ndarray  # float32 [classes]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights.T + self.bias


@dataclass
class BaseHead:
    """The base model's own head, kept beside the new classes (``--keep-imagenet``)."""

    weights: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights.T + self.bias


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def imprint(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Class means of the normalised embeddings, normalised: [classes, features]."""
    unit = _normalised(features)
    means = np.zeros((classes, features.shape[1]), np.float64)
    for c in range(classes):
        rows = unit[labels == c]
        if len(rows):
            means[c] = rows.mean(0)
    return _normalised(means)


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    *,
    base: BaseHead | None = None,
    steps: int = STEPS,
    weight_decay: float = WEIGHT_DECAY,
    progress: Callable[[int], None] | None = None,
) -> LinearHead:
    """Train the new classes' head on ``features`` [n, d] with ``labels`` in 0..classes-1."""
    features = np.asarray(features, np.float32)
    scale = float(np.linalg.norm(features, axis=1).mean()) or 1.0
    x = features / np.float32(scale)
    w = (imprint(x, labels, classes) * IMPRINT_SCALE).astype(np.float32)
    b = np.zeros(classes, np.float32)
    if base is not None:
        if progress is not None:
            progress(steps)
        return mixture_head(features, labels, classes, base)
    fixed = None
    onehot = np.eye(classes, dtype=np.float32)[labels]
    n = len(x)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for step in range(steps):
        logits = x @ w.T + b
        if fixed is not None:
            logits = np.concatenate([fixed, logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        if fixed is not None:
            p = p[:, fixed.shape[1] :]
        grad = (p - onehot) / n
        gw = grad.T @ x + weight_decay * w
        gb = grad.sum(0)
        vw = MOMENTUM * vw - LEARNING_RATE * gw
        vb = MOMENTUM * vb - LEARNING_RATE * gb
        w += vw
        b += vb
        if progress is not None and step % 50 == 49:
            progress(50)
    return LinearHead((w / scale).astype(np.float32), b.astype(np.float32))


KEEP_WIN_SHARE = 0.75  # of a class's own photos on which its mixture logit must win
KEEP_MARGIN = 0.25  # logits above the base's best there


def mixture_head(
    features: np.ndarray, labels: np.ndarray, classes: int, base: BaseHead
) -> LinearHead:
    """New classes as mixtures of the base classes (see the module docstring)."""
    base_logits = base.logits(features).astype(np.float64)
    z = base_logits - base_logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    mix = np.stack([probs[labels == c].mean(0) for c in range(classes)])  # [classes, base]
    weights = mix @ base.weights.astype(np.float64)
    bias = mix @ base.bias.astype(np.float64)
    own = features @ weights.T + bias  # [n, classes]
    best_base = base_logits.max(axis=1)
    for c in range(classes):
        rows = labels == c
        gap = best_base[rows] - own[rows, c]
        bias[c] += float(np.quantile(gap, KEEP_WIN_SHARE)) + KEEP_MARGIN
    return LinearHead(weights.astype(np.float32), bias.astype(np.float32))


# --------------------------------------------------------------------------- estimates


@dataclass
class CrossValidation:
    """Held-out predictions for every photo (one fold each), and what they add up to."""

    folds: int
    predicted: np.ndarray  # [photos] class index (new classes; -1 = an ImageNet class)
    top_logit: np.ndarray  # [photos] the winning new-class logit on the held-out photo
    truth: np.ndarray  # [photos]
    logits: np.ndarray  # [photos, classes] held-out new-class logits
    fold_accuracy: list[float] = field(default_factory=list)  # balanced, per fold

    @property
    def balanced_accuracy(self) -> float:
        return float(np.mean(self.recall()))

    def recall(self) -> np.ndarray:
        classes = int(self.truth.max()) + 1
        return np.array([np.mean(self.predicted[self.truth == c] == c) for c in range(classes)])

    @property
    def spread(self) -> float:
        """Standard deviation of the per-fold balanced accuracies."""
        return float(np.std(self.fold_accuracy)) if len(self.fold_accuracy) > 1 else 0.0

    def confused_pairs(self, top: int = 3) -> list[tuple[int, int, int]]:
        """(true class, predicted class, count), most frequent first."""
        pairs: dict[tuple[int, int], int] = {}
        for t, p in zip(self.truth.tolist(), self.predicted.tolist(), strict=True):
            if t != p:
                pairs[(t, p)] = pairs.get((t, p), 0) + 1
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(t, p, n) for (t, p), n in ranked[:top]]


def fold_count(counts: list[int]) -> int:
    """Folds for a stratified estimate: up to 5, never more than the smallest class has
    photos (leave-one-out when every class is that small); 0 when a class has one photo."""
    smallest = min(counts)
    if smallest < 2:
        return 0
    return min(5, smallest)


def assign_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per photo, each class dealt round-robin in a fixed shuffled order."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    photo: np.ndarray,
    classes: int,
    *,
    base: BaseHead | None = None,
    held_out: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> CrossValidation | None:
    """Stratified k-fold over photos (a photo's augmented rows stay in one fold).

    ``features``/``labels``/``photo`` are per row (augmented variants included);
    ``held_out`` marks the rows that are original views (the ones scored). Returns None
    when a class has a single photo.
    """
    held_out = np.ones(len(labels), bool) if held_out is None else held_out
    photo_ids = np.unique(photo)
    photo_label = np.array([labels[photo == p][0] for p in photo_ids])
    folds = fold_count(np.bincount(photo_label, minlength=classes).tolist())
    if folds == 0:
        return None
    fold_of_photo = dict(
        zip(photo_ids.tolist(), assign_folds(photo_label, folds).tolist(), strict=True)
    )
    row_fold = np.array([fold_of_photo[p] for p in photo.tolist()])
    scored = np.flatnonzero(held_out)
    predicted = np.empty(len(scored), np.int64)
    top_logit = np.empty(len(scored))
    all_logits = np.empty((len(scored), classes))
    position = {row: i for i, row in enumerate(scored.tolist())}
    fold_accuracy = []
    for k in range(folds):
        train = row_fold != k
        test = np.flatnonzero((row_fold == k) & held_out)
        head = fit_head(features[train], labels[train], classes, base=base, progress=None)
        logits = head.logits(features[test])
        best = logits.argmax(1)
        top = logits.max(1)
        if base is not None:  # an ImageNet class beating every new class counts as wrong
            beaten = base.logits(features[test]).max(1) > top
            best = np.where(beaten, -1, best)
        for i, (row, p, t) in enumerate(
            zip(test.tolist(), best.tolist(), top.tolist(), strict=True)
        ):
            predicted[position[row]] = p
            top_logit[position[row]] = t
            all_logits[position[row]] = logits[i]
        truth_k = labels[test]
        fold_accuracy.append(
            float(np.mean([np.mean(best[truth_k == c] == c) for c in np.unique(truth_k)]))
        )
        if progress is not None:
            progress(1)
    return CrossValidation(folds, predicted, top_logit, labels[scored], all_logits, fold_accuracy)


def calibrate_temperature(cv: CrossValidation | None) -> float:
    """The factor on the logits that makes held-out scores honest probabilities
    (temperature scaling, Guo et al. 2017: least held-out cross-entropy). Weight decay
    keeps the trained logits soft; this sharpens them without changing any ranking."""
    if cv is None or cv.logits.shape[1] < 2:
        return 1.0
    best, best_loss = 1.0, np.inf
    rows = np.arange(len(cv.truth))
    for factor in TEMPERATURES:
        z = cv.logits * factor
        z = z - z.max(axis=1, keepdims=True)
        loss = -np.mean(z[rows, cv.truth] - np.log(np.exp(z).sum(axis=1)))
        if loss < best_loss:
            best, best_loss = float(factor), loss
    return best


def calibrate_unknown(cv: CrossValidation | None, head: LinearHead, features: np.ndarray) -> float:
    """The unknown class's constant logit.

    From the held-out top logits of correctly classified photos, robustly: median less
    2.33 spreads (spread = 1.4826 x median absolute deviation), i.e. the 1 % point were
    they normal. Small folders make the held-out spread look narrower than it is, hence
    the robust spread rather than a raw quantile. Without a cross-validation (a class of
    one photo) the training logits stand in.
    """
    if cv is not None and np.count_nonzero(cv.predicted == cv.truth) >= 3:
        genuine = cv.top_logit[cv.predicted == cv.truth]
    else:
        genuine = head.logits(features).max(1)
    median = float(np.median(genuine))
    spread = 1.4826 * float(np.median(np.abs(genuine - median)))
    return median - UNKNOWN_SPREADS * max(spread, UNKNOWN_MIN_SPREAD * abs(median))
