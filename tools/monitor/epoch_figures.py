"""What the verdict reads of an epoch, and what it says: its thresholds (each explained, with its
reasoning and the research tools' own, in docs/monitor.md's table of findings), `EpochFigures` (the figures
the monitor gathered, and the properties the rules share: the chance level, whether the net learns
well, is stuck, or its loss falls) and `Finding` (one line of a verdict)."""
import math
from dataclasses import dataclass, field

import torch

# the loop and the data
ACCUMULATION_EXCESS = 0.5     # a gradient that holds more than 1.5x the step's own: earlier steps' gradients kept
INPUT_SCALE_MAX = 10.0        # normalised inputs have mean ~0 and std ~1 over a batch; 0-255 pixels do not (a
                              # standardised feature may reach 20 in a rare sample: the batch's spread, not its max)
# the learning rate: |update| / |weight| per step, healthy near 1e-3 (CS231n); the bounds sit 10x beyond [1e-4, 1e-2]
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1
UPDATE_RATIO_SLOW = 1e-4      # below the healthy band: with the loss still at chance, the net is not learning
LARGE_UPDATE_RATIO = 3e-2     # updates this large before units died or the loss stuck at chance: the cause
SPIKE_WINDOW = 10             # a step's loss is compared with the median of the 10 before it
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
COLLAPSE_IMAGES = 10          # valid-one-class: over at least 10 valid images ...
COLLAPSE_LOSS_FACTOR = 2.0    # ... with a valid loss of 2x chance or more: confidently wrong
IGNORED_RECALL = 0.05         # a class recalled for at most 5% of its valid images, two epochs running ...
IGNORED_EPOCHS = 2            # ... while the accuracy looks fine: the class is ignored
IGNORED_SHARE = 0.5           # ... and it has under half an even share of the valid images: a minority
# the learning rate's schedule
LR_COLLAPSED = 1e-3           # the lr below 1e-3 x the run's highest ...
LR_COLLAPSED_SHARE = 0.5      # ... for over half the epoch's steps, while the net has not learned: collapsed
# problems of the state of training (not of the loop's code): named again each epoch until the figures
# recover (accuracy past half the way from chance to 100%, the loss below chance), never 'healthy' meanwhile
PERSISTENT = ("lr-too-high", "lr-too-low", "lr-collapsed", "exploding", "plateau", "dead-relu", "vanishing",
              "saturated", "weight-decay-too-high", "class-ignored")
UNUSED = "no gradient in any step (forward does not use it)"  # unchanged-weights' reason for a layer forward skips
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
    steps of the run so far; identical: the trained weights whose units all hold the same values. `loss` is
    None when not given.
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
    identical: list = field(default_factory=list)

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


def recalls(confusion: list | None) -> list | None:
    """Per class: the share of its valid images predicted as it (None for a class with none)."""
    if not confusion:
        return None
    return [row[c] / sum(row) if sum(row) else None for c, row in enumerate(confusion)]


def step_figures(step_losses: list[float], classes: int | None) -> dict:
    """An epoch's step losses: median, max, the mean of its first and last quarters (a trend), and the
    spikes (above SPIKE_FACTOR x both the chance level and the median of the SPIKE_WINDOW steps before);
    {} when none is finite."""
    finite = [v for v in step_losses if math.isfinite(v)]
    if not finite:
        return {}
    losses = sorted(finite)
    median, chance = losses[len(losses) // 2], math.log(max(classes, 2)) if classes else 0.0
    # against the median of the steps just before, not the epoch's: a loss that falls fast (a regression's
    # first epoch) has early steps far above the epoch's median, and none of them is a spike
    spikes = sum(v > SPIKE_FACTOR * max(sorted(before)[len(before) // 2], chance)
                 for i, v in enumerate(finite) if (before := finite[max(0, i - SPIKE_WINDOW):i]))
    quarter = max(1, len(finite) // 4)
    return {"median": median, "max": losses[-1], "spikes": spikes, "start": sum(finite[:quarter]) / quarter,
            "end": sum(finite[-quarter:]) / quarter}


def decay_share(optimizer) -> float | None:
    """The largest share of the weights that weight decay alone removes per step, over the optimizer's
    groups: lr x weight_decay, divided by (1 - momentum) for SGD (momentum repeats it); None without one."""
    if optimizer is None:
        return None
    sgd = isinstance(optimizer, torch.optim.SGD)
    return max((g.get("lr", 0.0) * g.get("weight_decay", 0.0) / (max(1.0 - (g.get("momentum") or 0.0), 1e-3) if sgd else 1.0)
                for g in optimizer.param_groups), default=None)
