"""The verdict's rules on the course of the loss and the accuracy over epochs: an ignored class, valid
predictions of one class, overfitting, a plateau. Each reads an `EpochFigures` and returns a `Finding` or
None (tools.monitor.verdict_rules lists them in RULES, after the rules on the loop, the data and the
learning rate)."""
from tools.monitor.epoch_figures import (
    COLLAPSE_IMAGES,
    COLLAPSE_LOSS_FACTOR,
    IGNORED_EPOCHS,
    IGNORED_RECALL,
    IGNORED_SHARE,
    LOW_LOSS_FRACTION,
    ONE_CLASS_SHARE,
    OVERFIT_EPOCHS,
    OVERFIT_GAP,
    PLATEAU_EPOCHS,
    PLATEAU_NEAR,
    PLATEAU_SLOPE,
    RISE_FRACTION,
    EpochFigures,
    Finding,
)


def overfitting(e: EpochFigures) -> Finding | None:
    """The train set learned (a low train loss) while the valid loss rises epoch after epoch, to well above
    the train loss, by more than its own noise: each epoch by RISE_FRACTION of chance, and in all by more
    than any fall since its best (a valid loss jumping by 0.4 has not overfitted when it rises by 0.1),
    so that no CPU's last digit decides it. Once named, named while the valid loss does not fall."""
    train, valid = e.series("train_loss"), e.series("valid_loss")
    if len(valid) < OVERFIT_EPOCHS or None in valid[-OVERFIT_EPOCHS:] or None in train[-OVERFIT_EPOCHS:]:
        return None
    recent = valid[-OVERFIT_EPOCHS:]
    known = [v for v in valid if v is not None]
    best = min(known)
    since_best = known[len(known) - 1 - known[::-1].index(best):]
    noise = max((a - b for a, b in zip(since_best, since_best[1:]) if b < a), default=0.0)
    step = RISE_FRACTION * e.chance if e.chance is not None else 0.0
    rising = all(b - a >= step for a, b in zip(recent, recent[1:])) and recent[-1] - recent[0] > noise \
        and train[-1] < train[-OVERFIT_EPOCHS]
    # a rise that slows (0.0068 an epoch after 0.016) is the same overfitting, not a recovery
    still = "overfitting" in e.previous and valid[-1] >= valid[-2] and valid[-1] - best >= (OVERFIT_EPOCHS - 1) * step
    if not (e.loss_is_low and (rising or still)
            and valid[-1] >= max(LOW_LOSS_FRACTION * e.chance, OVERFIT_GAP * train[-1])):
        return None  # a valid loss still low (1e-6 -> 2e-6), or near the train loss, is noise on a small split
    return Finding("overfitting", f"valid loss {' -> '.join(f'{v:.3f}' for v in recent)} (best {best:.3f}) while "
                   f"the train loss fell to {train[-1]:.3g}", "valid",
                   "more data or augmentation, weight decay, dropout, or stop at the best epoch (checkpoint_best.pt)")


def slope(values: list[float]) -> float:
    """The least-squares slope of values over 0, 1, 2, ... (per epoch)."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum((x - mean_x) ** 2 for x in range(n))


def plateau(e: EpochFigures) -> Finding | None:
    """The valid accuracy far from 100% and flat for several epochs (e.g. the majority class, or labels
    the inputs do not carry), whether the train accuracy is flat too or climbs by memorising."""
    train, valid = e.series("train_acc")[-PLATEAU_EPOCHS:], e.series("valid_acc")[-PLATEAU_EPOCHS:]
    if len(valid) < PLATEAU_EPOCHS or None in valid or None in train or not e.classes:
        return None
    far, near = e.far_from_chance, 1 / e.classes + PLATEAU_NEAR * (1 - 1 / e.classes)
    if max(valid) >= far or slope(valid) > PLATEAU_SLOPE:
        return None
    if max(train) < far and slope(train) <= PLATEAU_SLOPE:
        memorising = ""
    elif max(valid) < near:  # the train accuracy climbs while the valid one stays near chance: memorising noise
        memorising = f" (train accuracy {train[0]:.1%} -> {train[-1]:.1%}: it memorises what does not generalise)"
    else:  # a small valid split that lags a learning train set: noise, not a plateau
        return None
    one = ""
    if e.predicted and sum(e.predicted):
        top = max(range(len(e.predicted)), key=e.predicted.__getitem__)
        share = e.predicted[top] / sum(e.predicted)
        one = f"; it predicts class {top} for {share:.0%} of the valid images" if share >= ONE_CLASS_SHARE else ""
    return Finding("plateau", f"valid accuracy {valid[-1]:.1%}, train {train[-1]:.1%}: valid below {far:.0%} and flat "
                   f"(trend under {PLATEAU_SLOPE:.0%} an epoch) for {PLATEAU_EPOCHS} epochs{memorising}{one}", "",
                   "check that the inputs carry the labels; then a higher learning rate, less weight decay, a bigger model")


def class_ignored(e: EpochFigures) -> Finding | None:
    """A minority class the net (almost) never recognises, IGNORED_EPOCHS epochs running, while the accuracy
    looks fine: the majority classes carry it (an imbalanced data set). A class of a fair share of the
    images (at least IGNORED_SHARE of an even share) that is not recognised yet is a class not learned yet,
    as healthy runs learn classes one after another; and without the counts of the valid confusion matrix
    there is no telling, so the rule stays silent."""
    series = [h.get("recalls") for h in e.history[-IGNORED_EPOCHS:]]
    rows = e.confusion or []
    if len(series) < IGNORED_EPOCHS or None in series or not e.learning_well or len(rows) != len(series[-1]):
        return None
    total = sum(sum(row) for row in rows)
    ignored = [c for c in range(len(series[-1]))
               if all(r[c] is not None and r[c] <= IGNORED_RECALL for r in series)
               and sum(rows[c]) < IGNORED_SHARE * total / len(rows)]
    if not ignored:
        return None
    names = e.class_names or [str(c) for c in range(len(series[-1]))]
    counts = ", ".join(f"{names[c]}: {series[-1][c]:.0%} of {sum(rows[c])}" for c in ignored)
    return Finding("class-ignored", f"class {counts} valid images recognised, for {IGNORED_EPOCHS} epochs, while the "
                   f"accuracy is {e.accuracy:.1%}: the other classes carry it", ", ".join(names[c] for c in ignored),
                   "weight the loss by class (CrossEntropyLoss(weight=...)) or sample the classes evenly "
                   "(WeightedRandomSampler); judge by per-class recall, not accuracy")


def valid_one_class(e: EpochFigures) -> Finding | None:
    """What a user sees at once, whatever its cause: the valid predictions (almost) all one class, over
    COLLAPSE_IMAGES images or more, the valid accuracy not clear of chance and the valid loss at least
    COLLAPSE_LOSS_FACTOR x the chance level (confidently wrong, not unsure), while training is clear of chance. The likely causes, in order: BatchNorm in eval mode (running statistics that lag weights still
    moving fast), or valid inputs prepared otherwise than the train ones. Silent without the valid
    predictions or a class count (no chance level to compare with)."""
    last = e.history[-1] if e.history else {}
    train, valid, loss = last.get("train_acc"), last.get("valid_acc"), last.get("valid_loss")
    if not e.predicted or not sum(e.predicted) or not e.classes or e.classes < 2 or None in (train, valid, loss):
        return None
    near = 1 / e.classes + PLATEAU_NEAR * (1 - 1 / e.classes)  # clear of chance: a quarter of the way to 100%
    top = max(range(len(e.predicted)), key=e.predicted.__getitem__)
    share = e.predicted[top] / sum(e.predicted)
    if share < ONE_CLASS_SHARE or sum(e.predicted) < COLLAPSE_IMAGES or train < near or valid >= near \
            or not loss >= COLLAPSE_LOSS_FACTOR * e.chance:
        return None  # a few images, or a loss near chance (unsure, not confidently wrong): a small split's noise
    names = e.class_names or [str(c) for c in range(len(e.predicted))]
    batch_norm = "BatchNorm" in (e.loop.get("train_mode_layers") or "")
    cause = ("BatchNorm in eval mode normalises with running statistics that lag weights still moving fast: a larger "
             "batch, a lower learning rate or a warmup, or BatchNorm's momentum higher (0.1 -> 0.3); if it lasts, "
             "check that the valid inputs are prepared as the train ones") if batch_norm else (
             "check that the valid inputs are prepared as the train ones (normalisation, transforms, channel order), "
             "and what model.eval() changes in the model")
    return Finding("valid-one-class", f"{share:.0%} of the {sum(e.predicted)} valid images predicted as class "
                   f"{names[top]}: valid accuracy {valid:.1%}, valid loss {loss:.3g} (chance {e.chance:.3g}), while "
                   f"training reaches {train:.1%}" + ("; the model has BatchNorm" if batch_norm else ""), "valid", cause)

