"""The verdict on an epoch of training: rules over the figures the monitor gathered.

Each rule is one small function that reads an `EpochFigures` and returns a `Finding` (a short name, the
evidence in numbers, the parameter or layer it concerns, and the fix to try) or None. `RULES` lists them
root causes first: a mistake in the loop or the data, then the learning rate, then what they cause
(non-finite values, exploding or vanishing gradients, saturated or dead units), then slow or unchanged
weights, overfitting and plateaus. The verdict's status is the first finding's name; every finding is
reported. A new rule is one function and one line in RULES. Each threshold below is explained, with its
reasoning and the research tools' own, in the README's table of findings.
"""
import math
from dataclasses import dataclass, field

# the loop and the data
ACCUMULATION_EXCESS = 0.5     # a gradient that holds more than 1.5x the step's own: earlier steps' gradients kept
INPUT_SCALE_MAX = 10.0        # normalised inputs have mean ~0 and std ~1 over a batch; 0-255 pixels do not (a
                              # standardised feature may reach 20 in a rare sample: the batch's spread, not its max)
# the learning rate: |update| / |weight| per step, healthy near 1e-3 (CS231n); the bounds sit 10x beyond [1e-4, 1e-2]
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1
UPDATE_RATIO_SLOW = 1e-4      # below the healthy band: with the loss still at chance, the net is not learning
LARGE_UPDATE_RATIO = 3e-2     # updates this large before units died or the loss stuck at chance: the cause
SPIKE_FACTOR = 3.0            # a step loss above 3x the chance level and 3x the epoch's median: a spike
SPIKES_MIN = 3                # spikes in one epoch that make an oscillating loss (one outlier batch does not)
CHANCE_BAND = 0.05            # a loss within 5% of ln(classes): the net guesses
FALLING = 0.8                 # a loss at 80% of where it was, or less, falls clearly
STUCK_STEPS = 50             # a loss at chance for fewer steps than this is a start, not stuck
STALL_FRACTION = 0.01         # without a chance level (a regression): a loss that fell by under 1% is stalled
# gradients and activations
EXPLODING_GROWTH = 100.0      # total grad norm 100x what it was at the first verdict
EXPLODING_RATIO = 1e3         # first layer's grad norm / last layer's above this: the gradient grows on the way back
VANISHING_RATIO = 1e-3        # ... below this: the gradient is lost on the way back
DIVERGED_LOSS_FACTOR = 10.0   # loss 10x the chance level: the weights were thrown far off
SATURATED_FRACTION = 0.5      # over half of a tanh/sigmoid layer's outputs within 1% of its limits
DEAD_RELU_FRACTION = 0.5      # over half of a ReLU layer's units never active over an evaluation pass
# the course of the loss and accuracy over epochs
LOW_LOSS_FRACTION = 0.2       # a loss below this fraction of the chance level counts as low
RISE_FRACTION = 0.01          # a valid loss that rose by 1% of the chance level has risen (1e-6 -> 2e-6 has not)
OVERFIT_EPOCHS = 3            # with a low train loss: the valid loss rising over 3 epochs (2 rises) ...
OVERFIT_GAP = 3.0             # ... to at least 3x the train loss
PLATEAU_EPOCHS = 5            # accuracies flat over 5 epochs (their trend below PLATEAU_SLOPE per epoch) ...
PLATEAU_SLOPE = 0.02
PLATEAU_FAR = 0.5             # ... and below chance + half the way from chance to 100%
PLATEAU_NEAR = 0.25           # a valid accuracy below chance + a quarter of the way while train climbs: memorising
ONE_CLASS_SHARE = 0.95        # 95% of the valid predictions one class: the net predicts the majority
IGNORED_RECALL = 0.05         # a class recalled for at most 5% of its valid images, two epochs running ...
IGNORED_EPOCHS = 2            # ... while the accuracy looks fine: the class is ignored
# the learning rate's schedule
LR_COLLAPSED = 1e-3           # the lr below 1e-3 x the run's highest ...
LR_COLLAPSED_SHARE = 0.5      # ... for over half the epoch's steps, while the net has not learned: collapsed
# problems of the state of training (not of the loop's code): named again each epoch until the figures
# recover (accuracy past half the way from chance to 100%, the loss below chance), never 'healthy' meanwhile
PERSISTENT = ("lr-too-high", "lr-too-low", "lr-collapsed", "exploding", "plateau", "dead-relu", "vanishing",
              "saturated", "weight-decay-too-high", "class-ignored")
ROUNDED_TO_ZERO = "every measured update was 0"  # unchanged-weights' reason for updates below float precision
NOTES = ("healthy", "converged", "frozen", "dead-units")  # findings that are information, not problems


@dataclass
class Finding:
    """One finding: `name` (a short word, also the verdict's status when it comes first), `evidence` (in
    numbers), `where` (the parameter, layer or split it concerns, or ''), `fix` (what to try)."""
    name: str
    evidence: str
    where: str = ""
    fix: str = ""

    def line(self, since: str | None = None) -> str:
        """The terminal's line; `since`: when it first appeared ('epoch 2'), when it persists (a short line then)."""
        where = f" [{self.where}]" if self.where else ""
        if since is not None:
            return f"{self.name} (since {since}){where}: {self.evidence}"
        return f"{self.name}{where}: {self.evidence}" + (f". Fix: {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        return {"name": self.name, "evidence": self.evidence, "where": self.where, "fix": self.fix}


@dataclass
class EpochFigures:
    """What the rules read: one epoch's figures.

    norms: parameter name -> gradient L2 norm (the epoch's mean), in forward order; loss: the epoch's
    mean train loss; classes: for the chance-level loss ln(classes); first_total_norm: the total
    gradient norm at the first verdict; update_ratios: name -> |update| / |weight| per step;
    activations: `ActivationStats.result()`; nonfinite: what was found non-finite, if anything;
    frozen: parameters frozen on purpose. steps: the epoch's step losses ('median', 'max', 'spikes');
    history: one dict per epoch so far, this one last ('train_loss', 'train_acc', 'valid_loss',
    'valid_acc', 'median_ratio', 'spikes'; None where not measured); loop: what the monitor saw of the
    loop ('accumulated', 'eval_train_mode', 'eval_autograd', 'evaluations', 'softmax', 'inputs');
    unchanged: parameter -> why it did not move; data: findings on the data set (leaks, missing classes);
    predicted: the valid split's predictions, per class (counts); first_loss: the run's first step loss;
    decay: the largest share of the weights that weight decay alone removes per step (from the optimizer);
    lr: the optimizer's learning rate ('now', 'max' over the run, 'low_share': the share of this epoch's
    steps with an lr below LR_COLLAPSED x 'max'), None without an optimizer; confusion: the valid split's
    confusion matrix (rows true class, columns predicted), as lists; previous: the problems named the
    epoch before (first first); train_steps: {'forwards': training forward passes this epoch, 'steps':
    optimizer steps taken}, None when the optimizer is not watched; class_names; run_steps: the training
    steps of the run so far. `loss` is None when not given.
    """
    norms: dict
    loss: float | None
    classes: int | None
    first_total_norm: float | None = None
    update_ratios: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)
    nonfinite: str | None = None
    frozen: list = field(default_factory=list)
    steps: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    loop: dict = field(default_factory=dict)
    unchanged: dict = field(default_factory=dict)
    data: list = field(default_factory=list)
    predicted: list | None = None
    first_loss: float | None = None
    decay: float | None = None
    lr: dict | None = None
    confusion: list | None = None
    previous: list = field(default_factory=list)
    train_steps: dict | None = None
    class_names: list | None = None
    run_steps: int | None = None

    @property
    def broken_at_start(self) -> bool:
        """The loss of the very first step, before any update, already far above chance: the init or the
        inputs, not the learning rate."""
        first = self.first_loss
        return first is not None and self.chance is not None and (
            first == math.inf or math.isfinite(first) and first > DIVERGED_LOSS_FACTOR * self.chance)

    @property
    def total_norm(self) -> float:
        """The L2 norm of all gradients together."""
        return math.sqrt(sum(v * v for v in self.norms.values())) if self.norms else 0.0

    @property
    def chance(self) -> float | None:
        """The loss of a net that guesses: ln(classes); None when the classes are not known (a regression)."""
        return math.log(max(self.classes, 2)) if self.classes else None

    @property
    def loss_is_low(self) -> bool:
        """Below LOW_LOSS_FRACTION of chance: the net has learned (small gradients are then expected)."""
        return self.loss_finite and self.chance is not None and self.loss < LOW_LOSS_FRACTION * self.chance

    @property
    def at_chance(self) -> bool:
        """The train loss within CHANCE_BAND of ln(classes): the net guesses."""
        return self.loss_finite and self.chance is not None and abs(self.loss - self.chance) < CHANCE_BAND * self.chance

    @property
    def stalled(self) -> bool:
        """The net is not learning: the loss at chance, or (with no chance level known, e.g. a regression)
        a loss that fell by less than STALL_FRACTION since the epoch before (in the first epoch: from its
        first quarter of steps to its last)."""
        if self.chance is not None:
            return self.at_chance
        start, end = self.steps.get("start"), self.steps.get("end")  # within the epoch: noisier (batches differ)
        if len(self.history) >= 2 and self.history[-2].get("train_loss") is not None:
            start, end = self.history[-2].get("train_loss"), self.loss
        return start is not None and end is not None and math.isfinite(start) and math.isfinite(end) \
            and end > (1 - STALL_FRACTION) * start

    @property
    def falling(self) -> bool:
        """The loss falls clearly, and below chance: its epoch's last quarter of steps FALLING x below its
        first, or the epoch's loss FALLING x below the epoch before's. Large updates while it does are a fast
        start (Adam's first steps on small fresh weights), not a problem."""
        start, end = self.steps.get("start"), self.steps.get("end")
        within = start is not None and end is not None and math.isfinite(start) and end < FALLING * start
        before = self.history[-2].get("train_loss") if len(self.history) >= 2 else None
        across = before is not None and self.loss_finite and math.isfinite(before) and self.loss < FALLING * before
        below_chance = self.chance is None or self.loss_finite and self.loss < (1 - CHANCE_BAND) * self.chance
        return (within or across) and below_chance  # falling back from a blow-up to chance is not learning

    @property
    def stuck_at_chance(self) -> bool:
        """The loss at chance this epoch and the one before, and the accuracy no better than before (by
        PLATEAU_SLOPE): not the first steps of a net that is slowly getting somewhere."""
        if not self.at_chance or len(self.history) < 2 or (self.run_steps is not None and self.run_steps < STUCK_STEPS):
            return False
        before = self.history[-2].get("train_loss")
        if before is None or not math.isfinite(before) or abs(before - self.chance) >= CHANCE_BAND * self.chance:
            return False
        accuracies = [h.get("valid_acc") if h.get("valid_acc") is not None else h.get("train_acc") for h in self.history]
        if None in accuracies[-2:]:
            return True
        return accuracies[-1] <= max(a for a in accuracies[:-1] if a is not None) + PLATEAU_SLOPE

    @property
    def accuracy(self) -> float | None:
        """This epoch's valid accuracy, else its train accuracy, else None."""
        last = self.history[-1] if self.history else {}
        return last.get("valid_acc") if last.get("valid_acc") is not None else last.get("train_acc")

    @property
    def far_from_chance(self) -> float:
        """Chance accuracy + PLATEAU_FAR of the way from it to 100%: an accuracy past it has learned."""
        classes = self.classes or 2
        return 1 / classes + PLATEAU_FAR * (1 - 1 / classes)

    @property
    def learning_well(self) -> bool:
        """The net has learned: its accuracy past `far_from_chance` (or, with no accuracy given, its loss
        below half the chance level). Then dead units or large updates are information, not a problem."""
        if self.accuracy is not None and self.classes:
            return self.accuracy >= self.far_from_chance and (self.loss is None or self.loss < self.chance)
        if self.chance is not None:
            return self.loss_finite and self.loss < 0.5 * self.chance
        # no chance level (a regression): the loss at half of where the run started, or less
        first = self.first_loss if self.first_loss is not None else next(
            (h.get("train_loss") for h in self.history if h.get("train_loss") is not None), None)
        return self.loss_finite and first is not None and math.isfinite(first) and self.loss < 0.5 * first

    @property
    def loss_finite(self) -> bool:
        """The loss is known and finite."""
        return self.loss is not None and math.isfinite(self.loss)

    @property
    def weight_norms(self) -> dict:
        """The norms of weights only (first and last layer compared), or of everything if none is named so."""
        return {n: v for n, v in self.norms.items() if n.endswith("weight")} or self.norms

    @property
    def median_update_ratio(self) -> float | None:
        """The median |update| / |weight| of the weights (of every parameter if none is named weight)."""
        return median_ratio(self.update_ratios)

    def series(self, key: str) -> list:
        """One figure over the epochs so far (this one last), None where it was not measured."""
        return [epoch.get(key) for epoch in self.history]


def median_ratio(update_ratios: dict) -> float | None:
    """The median of the weights' update ratios (of every parameter if none is named weight)."""
    ratios = [v for n, v in update_ratios.items() if n.endswith("weight")] or list(update_ratios.values())
    return sorted(ratios)[len(ratios) // 2] if ratios else None


def layers(names) -> str:
    """'conv1.weight', 'conv1.bias', 'conv2.weight' -> 'conv1, conv2' (layers, in order)."""
    return ", ".join(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))


def modules(names, most: int = 6) -> str:
    """Layers of these parameters, or, when there are more than `most`, the top-level modules that hold
    them ('layer1, layer2, layer3 and 2 more' rather than forty layers)."""
    found = layers(names)
    if len(found.split(", ")) <= most:
        return found
    return few(", ".join(dict.fromkeys(n.split(".", 1)[0] for n in found.split(", "))), most)


def few(names: str, most: int = 4) -> str:
    """'a, b, c, d, e, f' -> 'a, b, c, d and 2 more'."""
    parts = names.split(", ")
    return names if len(parts) <= most else ", ".join(parts[:most]) + f" and {len(parts) - most} more"


# ---- the loop and the data -------------------------------------------------------------------------

def data_problems(e: EpochFigures) -> Finding | None:
    """What `check_data` found in the splits: the same image in train and valid/test, a class missing."""
    return e.data[0] if e.data else None


def unnormalised_inputs(e: EpochFigures) -> Finding | None:
    """Training inputs whose batch mean or spread is far from a normalised input's (mean ~0, std ~1), e.g.
    pixels 0-255. Read from the spread, not the extremes: a standardised feature that is rarely active
    reaches 20 or more in the samples where it is."""
    inputs = e.loop.get("inputs")
    if inputs is None or not all(math.isfinite(v) for v in inputs.values()):
        return None  # NaN/Inf inputs: non-finite names them
    if abs(inputs["mean"]) <= INPUT_SCALE_MAX and inputs["std"] <= INPUT_SCALE_MAX:
        return None
    return Finding("inputs-not-normalised",
                   f"training inputs span [{inputs['min']:.3g}, {inputs['max']:.3g}], mean {inputs['mean']:.3g}, "
                   f"std {inputs['std']:.3g} (normalised inputs have mean ~0, std ~1)", "inputs",
                   "scale to [0, 1] (ToTensor) and Normalize(mean, std), in training and in evaluation alike")


def softmax_before_loss(e: EpochFigures) -> Finding | None:
    """CrossEntropyLoss given probabilities (a softmax before it) instead of logits."""
    if not e.loop.get("softmax"):
        return None
    return Finding("softmax-before-loss", "the loss's log_softmax takes the output of a softmax: the loss sees "
                   "probabilities, whose log_softmax varies by at most 1, so gradients are tiny", "output",
                   "drop the softmax: CrossEntropyLoss takes logits (apply softmax only to show probabilities)")


def wrong_loss(e: EpochFigures) -> Finding | None:
    """A loss given what it does not expect (seen in the loss's autograd graph): a regression loss on
    class indices, probabilities given to a loss that takes logits, NLLLoss on raw scores."""
    wrong = e.loop.get("wrong_loss")
    if not wrong:
        return None
    return Finding("wrong-loss", wrong["evidence"], "loss", wrong["fix"])


def train_in_eval_mode(e: EpochFigures) -> Finding | None:
    """Training steps (a backward followed) taken with the model in eval mode: dropout off, batch norm
    frozen at its running statistics (a model.eval() with no model.train() after it)."""
    count = e.loop.get("train_eval_mode", 0)
    if not count:
        return None
    return Finding("train-in-eval-mode", f"{count} training forward passes (a backward followed) ran in eval mode, "
                   f"with {e.loop.get('train_mode_layers') or 'dropout/batch-norm layers'} in it: dropout is off and "
                   "batch norm uses its running statistics", "model.training",
                   "call model.train() at the start of every epoch (after any validation that calls model.eval())")


def gradients_accumulate(e: EpochFigures) -> Finding | None:
    """A step's gradient holds earlier steps' gradients too: zero_grad is missing."""
    accumulated = e.loop.get("accumulated")
    if not accumulated or accumulated["steps"] < max(1, accumulated["checked"] // 2):
        return None
    return Finding("gradients-accumulate",
                   f"in {accumulated['steps']} of {accumulated['checked']} steps the gradient held "
                   f"{accumulated['excess']:.1f}x more than the step's own backward (median)", accumulated["where"],
                   "call optimizer.zero_grad() before each backward (or after each optimizer.step())")


def eval_in_train_mode(e: EpochFigures) -> Finding | None:
    """Evaluation passes (no backward follows) with dropout or batch norm still in training mode."""
    count, total = e.loop.get("eval_train_mode", 0), e.loop.get("evaluations", 0)
    if not count:
        return None
    return Finding("eval-in-train-mode", f"{count} of {total} evaluation forward passes ran with "
                   f"{e.loop.get('train_mode_layers', 'dropout/batch-norm layers')} in training mode: the valid "
                   "figures are noisy (dropout) or move the batch-norm statistics", "model.training",
                   "call model.eval() before validating and model.train() before training again")


def eval_with_autograd(e: EpochFigures) -> Finding | None:
    """Evaluation passes that build an autograd graph no backward ever uses."""
    count, total = e.loop.get("eval_autograd", 0), e.loop.get("evaluations", 0)
    if not count:
        return None
    return Finding("eval-with-autograd", f"{count} of {total} evaluation forward passes recorded an autograd graph "
                   "that no backward used: memory and time spent for nothing", "torch.is_grad_enabled()",
                   "wrap validation in `with torch.no_grad():` (or decorate it with @torch.no_grad())")


# ---- the learning rate -----------------------------------------------------------------------------

def lr_too_high(e: EpochFigures) -> Finding | None:
    """Updates a large share of the weights, or a loss that spikes again and again; and when units died
    or the loss stuck at chance after large updates, the learning rate is named as their cause."""
    if e.broken_at_start:  # large updates then are a symptom
        return None
    median, spikes = e.median_update_ratio, e.steps.get("spikes", 0)
    largest = max((r for r in e.series("median_ratio") if r is not None), default=None)
    if median is not None and median > UPDATE_RATIO_HIGH and (median >= 1.0 or not e.learning_well and not e.falling):
        evidence = f"each step changes the weights by {median:.1e} of their norm (median; healthy ~1e-3)"
    elif spikes >= SPIKES_MIN:
        evidence = (f"the loss spiked {spikes} times this epoch (up to {e.steps['max']:.3g}, median "
                    f"{e.steps['median']:.3g}): it oscillates")
    elif largest is not None and largest > LARGE_UPDATE_RATIO and (dead_relu(e) or e.stuck_at_chance) and not e.learning_well:
        after = "units died" if dead_relu(e) else f"the loss stuck at chance ({e.loss:.3f} ~ ln {e.classes})"
        evidence = f"{after} after updates of {largest:.1e} of the weights per step (healthy ~1e-3)"
    else:
        return None
    return Finding("lr-too-high", evidence, "", "divide the learning rate by 10 (and resume from the best checkpoint)")


def lr_collapsed(e: EpochFigures) -> Finding | None:
    """The learning rate driven to almost nothing (below LR_COLLAPSED x the run's highest for most of the
    epoch) while the net has not learned: e.g. a per-epoch scheduler stepped every batch. A schedule that
    ends near zero once the net has learned (cosine to zero) is not it."""
    lr = e.lr
    if not lr or not lr.get("max") or lr.get("low_share", 0.0) < LR_COLLAPSED_SHARE or e.learning_well:
        return None
    return Finding("lr-collapsed", f"the learning rate is {lr['now']:.1e}, {lr['now'] / lr['max']:.0e}x the run's "
                   f"highest ({lr['max']:.1e}), for {lr['low_share']:.0%} of this epoch's steps, while "
                   + (f"the accuracy is {e.accuracy:.1%}" if e.accuracy is not None else f"the loss is {e.loss:.3f}"),
                   "scheduler", "step a per-epoch scheduler once per epoch, not per batch (or set its step_size "
                   "and milestones in steps); check gamma and the schedule's length")


def weight_decay_too_high(e: EpochFigures) -> Finding | None:
    """Weight decay alone shrinks the weights by a large share every step: they are held near zero."""
    if e.decay is None or e.decay <= LARGE_UPDATE_RATIO:
        return None
    median = e.median_update_ratio
    return Finding("weight-decay-too-high", f"weight decay alone shrinks the weights by {e.decay:.1e} of themselves "
                   "per step (lr x weight_decay, / (1 - momentum) for SGD)"
                   + (f"; the median update is {median:.1e} of the weights" if median is not None else ""), "",
                   "lower weight_decay (1e-4 to 5e-4 is usual with SGD)")


# ---- gradients and activations ---------------------------------------------------------------------

def nonfinite_values(e: EpochFigures) -> Finding | None:
    """A non-finite loss or gradient."""
    taken = e.train_steps
    if taken and taken["forwards"] and not taken["steps"] and not e.nonfinite:
        return Finding("non-finite", f"no optimizer step was taken in this epoch's {taken['forwards']} training "
                       "forward passes: a GradScaler skips every step whose gradients overflow (or optimizer.step() "
                       "is never called)", "", "lower the learning rate; check the inputs for NaN and the loss for "
                       "log(0); call optimizer.step() (scaler.step(optimizer)) after each backward")
    if e.nonfinite or (e.loss is not None and not math.isfinite(e.loss)) or not math.isfinite(e.total_norm):
        where = e.nonfinite.split("first parameter with a non-finite gradient: ")[-1].split(" (")[0] \
            if e.nonfinite and "first parameter" in e.nonfinite else ""
        inputs = e.loop.get("inputs") or {}
        bad_inputs = "; the epoch's first training batch already holds NaN/Inf" \
            if any(not math.isfinite(v) for v in inputs.values()) else ""
        return Finding("non-finite", f"{e.nonfinite or 'non-finite loss or gradient'}{bad_inputs}", where,
                       "lower the learning rate; check the inputs for NaN and the loss for log(0)")
    return None


def exploding(e: EpochFigures) -> Finding | None:
    """A loss far above chance, a gradient norm that grew 100x, or a first layer's gradient 1000x the last's."""
    total, weights = e.total_norm, list(e.weight_norms)
    fix = "lower the learning rate or clip gradients (clip_grad_norm_); check the init's scale"
    if e.broken_at_start:
        return Finding("exploding", f"the loss of the very first step, before any update, was {e.first_loss:.3g} "
                       f"(chance ln({e.classes}) = {e.chance:.2f}): the outputs are huge from the start", "init",
                       "initialise with the layers' fan-in in mind (kaiming for ReLU, xavier for tanh/sigmoid)")
    if e.loss_finite and e.chance is not None and e.loss > DIVERGED_LOSS_FACTOR * e.chance:
        return Finding("exploding", f"loss {e.loss:.3g} is {e.loss / e.chance:.0f}x the chance level ln({e.classes}) "
                       f"= {e.chance:.2f}: training diverged", "", fix)
    if e.first_total_norm and total > EXPLODING_GROWTH * e.first_total_norm:
        return Finding("exploding", f"total gradient norm grew {total / e.first_total_norm:.0f}x since the first "
                       f"verdict ({e.first_total_norm:.3g} -> {total:.3g})", "", fix)
    if len(weights) >= 2 and e.norms[weights[-1]] > 0 and e.norms[weights[0]] / e.norms[weights[-1]] > EXPLODING_RATIO:
        first, last = e.norms[weights[0]], e.norms[weights[-1]]
        return Finding("exploding", f"{weights[0]}'s gradient {first:.2e} is {first / last:.0e}x {weights[-1]}'s "
                       f"{last:.2e}: it grows layer by layer on the way back", weights[0],
                       "initialise with the layers' fan-in in mind (kaiming for ReLU, xavier for tanh)")
    return None


def saturated(e: EpochFigures) -> Finding | None:
    """Over half of a tanh or sigmoid layer's outputs pinned at its limits: their gradient is ~0."""
    pinned = {n: s["saturated"] for n, s in e.activations.items() if s.get("saturated", 0.0) > SATURATED_FRACTION}
    if not pinned:
        return None
    worst = max(pinned, key=pinned.get)
    return Finding("saturated", f"{pinned[worst]:.0%} of {worst}'s outputs are within 1% of its limits "
                   f"({len(pinned)} layer(s) over {SATURATED_FRACTION:.0%})", worst,
                   "a smaller init (xavier for tanh/sigmoid), normalised inputs, or ReLU")


def vanishing(e: EpochFigures) -> Finding | None:
    """The first layer's gradient far smaller than the last layer's, while the loss is not low."""
    weights = list(e.weight_norms)
    if len(weights) < 2 or not math.isfinite(e.total_norm) or e.loss_is_low or not e.loss_finite \
            or e.chance is not None and e.loss > DIVERGED_LOSS_FACTOR * e.chance:
        return None  # a low loss: small gradients are success; a diverged one: the gradients were thrown off
    first, last = e.norms[weights[0]], e.norms[weights[-1]]
    if last > 0 and first / last < VANISHING_RATIO:
        return Finding("vanishing", f"{weights[0]}'s gradient {first:.2e} is {last / max(first, 1e-45):.0e}x smaller "
                       f"than {weights[-1]}'s {last:.2e} while the loss {e.loss:.3f} is not low", weights[0],
                       "ReLU instead of sigmoid/tanh in deep nets, kaiming init, batch norm or residual connections")
    return None


def dead_relu(e: EpochFigures) -> Finding | None:
    """Over half of a ReLU layer's units never fire over the evaluation pass, in a net that has not learned
    (in one that learns well they are information: `dead_units`)."""
    dead = dead_layers(e)
    if not dead or e.learning_well:
        return None
    worst = max(dead, key=dead.get)
    return Finding("dead-relu", f"{dead[worst]:.0%} of {worst}'s units never fire over the valid pass "
                   f"({len(dead)} layer(s) over {DEAD_RELU_FRACTION:.0%})", worst,
                   "a lower learning rate; biases not negative at init; LeakyReLU")


def dead_layers(e: EpochFigures) -> dict:
    """ReLU layer -> the share of its units that never fire, for layers over DEAD_RELU_FRACTION."""
    return {name: stats["dead"] for name, stats in e.activations.items() if stats.get("dead", 0.0) > DEAD_RELU_FRACTION}


def dead_units(e: EpochFigures) -> Finding | None:
    """Dead units in a net that learns well: a note (no fix), never a problem."""
    dead = dead_layers(e)
    if not dead or not e.learning_well:
        return None
    worst = max(dead, key=dead.get)
    return Finding("dead-units", f"{dead[worst]:.0%} of {worst}'s units never fire over the valid pass, while the net "
                   f"learns well (accuracy {e.accuracy:.1%}): information, not a problem", worst)


# ---- slow or unchanged weights ---------------------------------------------------------------------

def lr_too_low(e: EpochFigures) -> Finding | None:
    """The weights barely move while there is still something to learn: the median update/weight ratio
    far below the healthy 1e-3, or below the healthy band with the loss still at chance. Once the loss
    is low, small updates are what a decayed learning rate at convergence gives: not a finding."""
    median = e.median_update_ratio
    largest = max((r for r in e.series("median_ratio") if r is not None), default=0.0)
    if median is None or e.loss_is_low or not (median < UPDATE_RATIO_LOW or e.stalled and median < UPDATE_RATIO_SLOW):
        return None
    if largest > LARGE_UPDATE_RATIO or lr_collapsed(e):
        return None  # tiny updates after large ones (units a high lr killed), or a collapsed schedule: not the cause
    return Finding("lr-too-low", f"each step changes the weights by {median:.1e} of their norm (median; "
                   "healthy ~1e-3)" + (f"; loss {e.loss:.3f}" if e.loss_finite else "")
                   + (f" ~ chance ln({e.classes}): not learning" if e.at_chance else
                      ", falling by under 1%: not learning" if e.stalled else ""),
                   "", "raise the learning rate (x10 at a time, or a learning-rate range test)")


def unchanged_weights(e: EpochFigures) -> Finding | None:
    """Parameters that should train but did not move over the epoch, for a reason in the loop: left out of
    the optimizer, requires_grad off, unused by forward, a group at lr 0 (a root cause, named early)."""
    if not any(why != ROUNDED_TO_ZERO for why in e.unchanged.values()):
        return None
    return unchanged_finding(e.unchanged)


def updates_rounded_to_zero(e: EpochFigures) -> Finding | None:
    """Parameters whose every measured update was 0 (below their float precision), with no reason in the
    loop: named after lr-too-low, whose effect it usually is."""
    if not e.unchanged or any(why != ROUNDED_TO_ZERO for why in e.unchanged.values()):
        return None
    return unchanged_finding(e.unchanged)


def unchanged_finding(unchanged: dict) -> Finding:
    why = dict.fromkeys(unchanged.values())
    return Finding("unchanged-weights", f"{len(unchanged)} parameter(s) did not move: "
                   + "; ".join(f"{few(layers(n for n, w in unchanged.items() if w == reason))}: {reason}" for reason in why),
                   few(layers(unchanged)), "give them to the optimizer with a learning rate > 0 and requires_grad "
                   "True (or, if frozen on purpose, tell the monitor: frozen=[...])")


# ---- the course of the loss and accuracy -----------------------------------------------------------

def overfitting(e: EpochFigures) -> Finding | None:
    """The training set learned (a low train loss) while the valid loss rises epoch after epoch, to well
    above the train loss. A noisy valid loss that jumps once, or while the train loss is still high, or
    that stays near it, is not it."""
    train, valid = e.series("train_loss"), e.series("valid_loss")
    if len(valid) < OVERFIT_EPOCHS or None in valid[-OVERFIT_EPOCHS:] or None in train[-OVERFIT_EPOCHS:]:
        return None
    recent = valid[-OVERFIT_EPOCHS:]
    best = min(v for v in valid if v is not None)
    rising = all(b > a for a, b in zip(recent, recent[1:])) and train[-1] < train[-OVERFIT_EPOCHS]
    if not (e.loss_is_low and rising and valid[-1] >= max(LOW_LOSS_FRACTION * e.chance, OVERFIT_GAP * train[-1])):
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


def recalls(confusion: list | None) -> list | None:
    """Per class: the share of its valid images predicted as it (None for a class with none)."""
    if not confusion:
        return None
    return [row[c] / sum(row) if sum(row) else None for c, row in enumerate(confusion)]


def class_ignored(e: EpochFigures) -> Finding | None:
    """A class the net (almost) never recognises, IGNORED_EPOCHS epochs running, while the accuracy looks
    fine: the majority classes carry it (an imbalanced data set)."""
    series = [h.get("recalls") for h in e.history[-IGNORED_EPOCHS:]]
    if len(series) < IGNORED_EPOCHS or None in series or not e.learning_well:
        return None
    ignored = [c for c in range(len(series[-1]))
               if all(r[c] is not None and r[c] <= IGNORED_RECALL for r in series)]
    if not ignored:
        return None
    names = e.class_names or [str(c) for c in range(len(series[-1]))]
    rows = e.confusion or []
    counts = ", ".join(f"{names[c]}: {series[-1][c]:.0%} of {sum(rows[c])}" if rows else names[c] for c in ignored)
    return Finding("class-ignored", f"class {counts} valid images recognised, for {IGNORED_EPOCHS} epochs, while the "
                   f"accuracy is {e.accuracy:.1%}: the other classes carry it", ", ".join(names[c] for c in ignored),
                   "weight the loss by class (CrossEntropyLoss(weight=...)) or sample the classes evenly "
                   "(WeightedRandomSampler); judge by per-class recall, not accuracy")


RULES = (  # root causes first: the loop and the data, the learning rate, then what they cause
    data_problems, unnormalised_inputs, wrong_loss, softmax_before_loss, unchanged_weights, train_in_eval_mode,
    gradients_accumulate, eval_in_train_mode, lr_collapsed, weight_decay_too_high, lr_too_high, exploding,
    nonfinite_values, saturated, dead_relu, vanishing, lr_too_low, updates_rounded_to_zero, class_ignored,
    overfitting, plateau,
    eval_with_autograd,
)


@dataclass
class Verdict:
    """The diagnosis of one epoch: a status word (the first finding's name, or healthy / converged) and
    the findings, worst first (the last one may be 'frozen': layers frozen on purpose, never a problem).
    since: finding name -> the epoch it first appeared; previous: the names found the epoch before;
    labels: finding name -> when it first appeared, as the monitor names epochs ('epoch 2', 'samples 20')."""
    status: str
    findings: list = field(default_factory=list)
    since: dict = field(default_factory=dict)
    previous: set = field(default_factory=set)
    labels: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(f.evidence if f.name == self.status or f.name in ("healthy", "converged")
                                               else f"{f.name}: {f.evidence}" for f in self.findings)

    @property
    def problems(self) -> list:
        """The findings that are problems (not healthy, converged or frozen)."""
        return [f for f in self.findings if f.name not in NOTES]

    def as_dict(self) -> dict:
        """{'status', 'findings': [{'name', 'evidence', 'where', 'fix', 'first_epoch'}]}: for metrics.json."""
        return {"status": self.status,
                "findings": [f.as_dict() | {"first_epoch": self.since.get(f.name)} for f in self.findings]}

    def lines(self) -> list[str]:
        """One line per finding, worst first; a problem also found the epoch before is shortened (no fix),
        with the epoch it first appeared."""
        return [f.line(self.labels.get(f.name, f"epoch {self.since.get(f.name)}")
                       if f.name in self.previous and f in self.problems else None) for f in self.findings]


def judge(e: EpochFigures) -> Verdict:
    """Every rule on one epoch's figures: the first finding's name as the status, every finding; else
    converged (train and valid loss low: small gradients are success, not vanishing) or healthy.
    Parameters frozen on purpose are named last, as frozen, never as a problem."""
    found = [finding for rule in RULES if (finding := rule(e))] or still_stuck(e)
    if found:
        verdict = Verdict(found[0].name, found)
    else:
        verdict = healthy_or_converged(e)
    if (note := dead_units(e)) is not None:
        verdict.findings.append(note)
    if e.frozen:
        verdict.findings.append(Finding("frozen", f"frozen on purpose: {modules(e.frozen)}", modules(e.frozen)))
    return verdict


def recovered(e: EpochFigures) -> bool:
    """The figures are back: the accuracy clear of chance (a quarter of the way to 100%, when measured) and
    the loss below the chance level (when given), not at it. A hard task's healthy run may never pass half
    the way: that bar would keep a false alarm alive."""
    if e.chance is None:
        return e.learning_well
    near = 1 / e.classes + PLATEAU_NEAR * (1 - 1 / e.classes)  # clear of chance: a quarter of the way to 100%
    accuracy_back = e.accuracy is None or e.accuracy >= near
    loss_back = e.loss is None or e.loss_finite and e.loss < (1 - CHANCE_BAND) * e.chance
    return accuracy_back and loss_back and (e.accuracy is not None or e.loss is not None)


def still_stuck(e: EpochFigures) -> list:
    """No rule fires this epoch, but a problem of the state of training (PERSISTENT) was named the epoch
    before and the figures have not recovered: it is named again, never 'healthy' meanwhile."""
    stuck = [name for name in e.previous if name in PERSISTENT]
    if not stuck or recovered(e):
        return []
    figures = [f"accuracy {e.accuracy:.1%}" if e.accuracy is not None else "",
               f"loss {e.loss:.3f}" + (f" (chance {e.chance:.3f})" if e.chance else "") if e.loss_finite else ""]
    bar = (f" (recovered: accuracy past {1 / e.classes + PLATEAU_NEAR * (1 - 1 / e.classes):.0%} and the loss "
           "below chance)") if e.classes else " (recovered: the loss below half its first step's)"
    return [Finding(stuck[0], "not recovered: " + ", ".join(f for f in figures if f) + bar)]


def healthy_or_converged(e: EpochFigures) -> Verdict:
    """No problem found: converged when the train loss (and the valid loss, when measured) is low and the
    valid loss is not rising; healthy otherwise."""
    valid = [v for v in e.series("valid_loss") if v is not None]
    rise = RISE_FRACTION * (e.chance if e.chance is not None else abs(valid[-2]) if len(valid) >= 2 else 0.0)
    rising = len(valid) >= 2 and valid[-1] > valid[-2] + rise
    valid_low = not valid or e.chance is not None and valid[-1] < LOW_LOSS_FRACTION * e.chance
    median = e.median_update_ratio
    loss = f"loss {e.loss:.3f}" if e.loss_finite else "loss not given"
    if e.loss_is_low and valid_low and not rising:
        return Verdict("converged", [Finding("converged", loss + (f", valid {valid[-1]:.3f}" if valid else "")
                                             + f" low and gradients small as expected (total norm {e.total_norm:.2e})")])
    return Verdict("healthy", [Finding("healthy", loss + (f", valid {valid[-1]:.3f}" if valid else "")
                                       + (f" (rose from {valid[-2]:.3f})" if rising else "")
                                       + f", total gradient norm {e.total_norm:.2e}"
                                       + (f", median update ratio {median:.1e}" if median is not None else ""))])


def diagnose(norms: dict[str, float], loss: float, classes: int, first_total_norm: float | None = None,
             update_ratios: dict[str, float] | None = None, activations: dict | None = None,
             nonfinite: str | None = None) -> Verdict:
    """`judge` of one epoch's figures, given one by one (see `EpochFigures` for what each is)."""
    return judge(EpochFigures(norms, loss, classes, first_total_norm, update_ratios or {}, activations or {},
                              nonfinite))
