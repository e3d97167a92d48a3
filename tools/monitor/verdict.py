"""The verdict on an epoch of training: rules over the figures the monitor gathered.

Each rule is one small function that reads an `EpochFigures` and returns a `Finding` (a short name, the
evidence in numbers, the parameter or layer it concerns, and the fix to try) or None. `RULES` lists them
root causes first: a mistake in the loop or the data, then the learning rate, then what they cause
(non-finite values, exploding or vanishing gradients, saturated or dead units), then slow or unchanged
weights, overfitting and plateaus. The verdict's status is the first finding's name; every finding is
reported. The figures and thresholds live in `tools.monitor.epoch_figures`, the rules in `tools.monitor.verdict_rules`;
this module judges with them, and keeps a stuck run named until it recovers.
"""
from dataclasses import dataclass, field

from tools.monitor.epoch_figures import (
    CHANCE_BAND,
    LOW_LOSS_FRACTION,
    NOTES,
    PERSISTENT,
    PLATEAU_NEAR,
    RISE_FRACTION,
    EpochFigures,
    Finding,
    modules,
)
from tools.monitor.verdict_rules import RULES, dead_units


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
