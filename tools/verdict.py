"""The verdict on an epoch of training: rules over the figures the monitor gathered.

Each rule is one small function that reads an `EpochFigures` and returns a finding (a sentence with its
numbers) or None. `RULES` lists them from the most severe down; the verdict's status is the first rule
that finds something, and every finding is reported. A new rule is one function and one line in RULES.
The thresholds are explained, with their reasoning, in the README.
"""
import math
from dataclasses import dataclass, field

VANISHING_RATIO = 1e-3       # first layer's grad norm / last layer's below this: the gradient is lost on the way back
LOW_LOSS_FRACTION = 0.2      # loss below this fraction of chance level (ln classes) counts as low
EXPLODING_GROWTH = 100.0     # total grad norm 100x what it was at the first verdict: exploding
DIVERGED_LOSS_FACTOR = 10.0  # loss 10x the chance level: the weights were thrown far off (diverged)
DEAD_RELU_FRACTION = 0.5     # over half of a ReLU layer's units never active over an evaluation pass
UPDATE_RATIO_LOW = 1e-5      # |update| / |weight| per step; healthy is about 1e-3 (CS231n),
UPDATE_RATIO_HIGH = 1e-1     # these bounds sit 10x beyond the healthy band [1e-4, 1e-2]


@dataclass
class EpochFigures:
    """What the rules read: one epoch's figures.

    norms: parameter name -> gradient L2 norm (the epoch's mean), in forward order; loss: the epoch's
    mean train loss; classes: for the chance-level loss ln(classes); first_total_norm: the total
    gradient norm at the first verdict; update_ratios: name -> |update| / |weight| per step;
    activations: `ActivationStats.result()`; nonfinite: what was found non-finite, if anything.
    """
    norms: dict
    loss: float
    classes: int
    first_total_norm: float | None = None
    update_ratios: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)
    nonfinite: str | None = None
    frozen: list = field(default_factory=list)  # parameters frozen on purpose: named, never judged

    @property
    def total_norm(self) -> float:
        """The L2 norm of all gradients together."""
        return math.sqrt(sum(v * v for v in self.norms.values())) if self.norms else 0.0

    @property
    def chance(self) -> float:
        """The loss of a net that guesses: ln(classes)."""
        return math.log(max(self.classes, 2))

    @property
    def loss_is_low(self) -> bool:
        """Below LOW_LOSS_FRACTION of chance: the net has learned (small gradients are then expected)."""
        return math.isfinite(self.loss) and self.loss < LOW_LOSS_FRACTION * self.chance

    @property
    def weight_norms(self) -> dict:
        """The norms of weights only (first and last layer compared), or of everything if none is named so."""
        return {n: v for n, v in self.norms.items() if n.endswith("weight")} or self.norms

    @property
    def median_update_ratio(self) -> float | None:
        """The median |update| / |weight| of the weights (of every parameter if none is named weight)."""
        ratios = [v for n, v in self.update_ratios.items() if n.endswith("weight")] or list(self.update_ratios.values())
        return sorted(ratios)[len(ratios) // 2] if ratios else None


def exploding(e: EpochFigures) -> str | None:
    """A non-finite loss or gradient, a loss far above chance, or a gradient norm that grew 100x."""
    total = e.total_norm
    if e.nonfinite or not math.isfinite(e.loss) or not math.isfinite(total):
        return f"non-finite values: {e.nonfinite or 'loss or gradient'}"
    if e.loss > DIVERGED_LOSS_FACTOR * e.chance:
        return (f"loss {e.loss:.3g} is {e.loss / e.chance:.0f}x the chance level ln({e.classes}) = "
                f"{e.chance:.2f}: training diverged")
    if e.first_total_norm and total > EXPLODING_GROWTH * e.first_total_norm:
        return (f"total gradient norm grew {total / e.first_total_norm:.0f}x since the first verdict "
                f"({e.first_total_norm:.3g} -> {total:.3g})")
    return None


def vanishing(e: EpochFigures) -> str | None:
    """The first layer's gradient far smaller than the last layer's, while the loss is not low."""
    weights = list(e.weight_norms)
    if len(weights) < 2 or not math.isfinite(e.total_norm) or e.loss_is_low:
        return None
    first, last = e.norms[weights[0]], e.norms[weights[-1]]
    if last > 0 and first / last < VANISHING_RATIO:
        return (f"{weights[0]} gradient {first:.2e} is {last / max(first, 1e-45):.0e}x smaller than "
                f"{weights[-1]}'s {last:.2e} while the loss {e.loss:.3f} is not low")
    return None


def dead_relu(e: EpochFigures) -> str | None:
    """Over half of a ReLU layer's units never fire over the evaluation pass."""
    dead = {name: stats["dead"] for name, stats in e.activations.items()
            if stats.get("dead", 0.0) > DEAD_RELU_FRACTION}
    if not dead:
        return None
    worst = max(dead, key=dead.get)
    return (f"dead ReLUs: over {DEAD_RELU_FRACTION:.0%} of the units never fire in {len(dead)} layer(s), "
            f"worst {worst} ({dead[worst]:.0%})")


def lr_too_low(e: EpochFigures) -> str | None:
    """The weights barely move: the median update/weight ratio far below the healthy 1e-3."""
    median = e.median_update_ratio
    if median is not None and median < UPDATE_RATIO_LOW:
        return f"median update/weight ratio {median:.1e} < {UPDATE_RATIO_LOW:.0e}: learning rate too low"
    return None


def lr_too_high(e: EpochFigures) -> str | None:
    """Each step changes the weights by a large share of themselves."""
    median = e.median_update_ratio
    if median is not None and median > UPDATE_RATIO_HIGH:
        return f"median update/weight ratio {median:.1e} > {UPDATE_RATIO_HIGH:.0e}: learning rate too high"
    return None


RULES = (  # (status, rule), most severe first
    ("exploding", exploding),
    ("vanishing", vanishing),
    ("dead-relu", dead_relu),
    ("lr-too-low", lr_too_low),
    ("lr-too-high", lr_too_high),
)


@dataclass
class Verdict:
    """The diagnosis of one epoch: a status word and the findings that led to it."""
    status: str                      # healthy, converged, or the status of the first rule that found something
    findings: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(self.findings)


def judge(e: EpochFigures) -> Verdict:
    """Every rule on one epoch's figures: the most severe finding's status, all findings; else converged
    (a low loss: small gradients are success, not vanishing) or healthy. Parameters frozen on purpose
    are named last, as frozen, never as a problem."""
    verdict = judge_trained(e)
    if e.frozen:
        verdict.findings.append(f"frozen on purpose: {frozen_layers(e.frozen)}")
    return verdict


def frozen_layers(names: list[str]) -> str:
    """'conv1.weight', 'conv1.bias', 'conv2.weight' -> 'conv1, conv2' (layers, in order)."""
    return ", ".join(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))


def judge_trained(e: EpochFigures) -> Verdict:
    """`judge` of the parameters that trained."""
    found = [(status, finding) for status, rule in RULES if (finding := rule(e))]
    if found:
        return Verdict(found[0][0], [finding for _, finding in found])
    if e.loss_is_low:
        return Verdict("converged", [f"loss {e.loss:.3f} is low and gradients small as expected "
                                     f"(total norm {e.total_norm:.2e})"])
    median = e.median_update_ratio
    return Verdict("healthy", [f"loss {e.loss:.3f}, total gradient norm {e.total_norm:.2e}"
                               + (f", median update ratio {median:.1e}" if median is not None else "")])


def diagnose(norms: dict[str, float], loss: float, classes: int, first_total_norm: float | None = None,
             update_ratios: dict[str, float] | None = None, activations: dict | None = None,
             nonfinite: str | None = None) -> Verdict:
    """`judge` of one epoch's figures, given one by one (see `EpochFigures` for what each is)."""
    return judge(EpochFigures(norms, loss, classes, first_total_norm, update_ratios or {}, activations or {},
                              nonfinite))
