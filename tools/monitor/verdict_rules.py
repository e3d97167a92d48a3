"""The rules of the verdict: each one small function that reads an `EpochFigures` and returns a `Finding`
(a short name, the evidence in numbers, the parameter or layer it concerns, and the fix to try) or None.
`RULES` lists them root causes first: a mistake in the loop or the data, then the learning rate, then
what they cause (non-finite values, exploding or vanishing gradients, saturated or dead units), then slow
or unchanged weights; the rules on the course of the loss and accuracy (an ignored class, valid predictions
of one class, overfitting, plateaus) are tools.monitor.curve_rules'. A new rule is one function and one
line in RULES."""
import math

from tools.monitor.curve_rules import class_ignored, overfitting, plateau, valid_one_class
from tools.monitor.epoch_figures import (
    DEAD_RELU_FRACTION,
    DIVERGED_LOSS_FACTOR,
    EXPLODING_GROWTH,
    EXPLODING_RATIO,
    INPUT_SCALE_MAX,
    LARGE_UPDATE_RATIO,
    LR_COLLAPSED_SHARE,
    ROUNDED_TO_ZERO,
    SATURATED_FRACTION,
    SPIKES_MIN,
    UNUSED,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    UPDATE_RATIO_SLOW,
    VANISHING_RATIO,
    EpochFigures,
    Finding,
    few,
    layers,
)

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


def identical_units(e: EpochFigures) -> Finding | None:
    """Every unit of a layer with the same weights after an epoch of training (zero or constant init): the
    units compute one output and get one gradient, so they never come apart; with all weights zero no
    gradient reaches the layers below, and the updates are 0 of a 0 norm. The cause upstream of a loss
    stuck at chance, unchanged weights and dead or vanishing units: named before them."""
    if not e.identical:
        return None
    shown = few(layers(e.identical))
    return Finding("identical-units", f"every unit of {shown} holds the same weights after an epoch of training: "
                   "they compute one output and get one gradient, so they never come apart (a zero or constant "
                   "init)", shown, "initialise the weights randomly (the layers' default init, or "
                   "nn.init.kaiming_normal_ / xavier_uniform_); a constant init only for biases")


def softmax_before_loss(e: EpochFigures) -> Finding | None:
    """CrossEntropyLoss given bounded values (a softmax of any axis, a sigmoid, a tanh before it) instead of
    logits."""
    what = e.loop.get("softmax")
    if not what:
        return None
    what = what if isinstance(what, str) else "a softmax"  # a checkpoint of an older version kept True
    return Finding("softmax-before-loss", f"the loss's log_softmax takes the output of {what}: the loss sees "
                   "values bounded to a range of at most 2, whose log_softmax cannot approach 0, so the loss stays "
                   "high and its gradients are tiny", "output",
                   f"drop {what}: CrossEntropyLoss takes logits (apply softmax only to show probabilities)")


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
    valid = e.history[-1].get("valid_loss") if e.history else None
    if valid is not None and not math.isfinite(valid) and not e.nonfinite and (e.loss is None or math.isfinite(e.loss)):
        return Finding("non-finite", f"the valid loss is {valid} while the train loss is {e.loss}: the model gives "
                       "NaN/Inf on the valid data only", "valid", "look for NaN/Inf in the valid inputs (a zero std in "
                       "their normalisation, a log of 0); check the valid loss's computation")
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
    """The finding, with the fix for its reasons: a layer forward never uses is used or removed (giving it to
    the optimizer would change nothing); any other is given to the optimizer at lr > 0, with requires_grad."""
    why = dict.fromkeys(unchanged.values())
    fixes = (["use it in forward, or remove it from the model"] if UNUSED in why else []) + (
        ["give them to the optimizer with a learning rate > 0 and requires_grad True (or, if frozen on purpose, "
         "tell the monitor: frozen=[...])"] if any(reason != UNUSED for reason in why) else [])
    return Finding("unchanged-weights", f"{len(unchanged)} parameter(s) did not move: "
                   + "; ".join(f"{few(layers(n for n, w in unchanged.items() if w == reason))}: {reason}" for reason in why),
                   few(layers(unchanged)), "; ".join(fixes))


RULES = (  # root causes first: the loop and the data, the learning rate, then what they cause
    data_problems, identical_units, unnormalised_inputs, wrong_loss, softmax_before_loss, unchanged_weights, train_in_eval_mode,
    gradients_accumulate, eval_in_train_mode, lr_collapsed, weight_decay_too_high, lr_too_high, exploding,
    nonfinite_values, saturated, dead_relu, vanishing, lr_too_low, updates_rounded_to_zero, class_ignored,
    valid_one_class, overfitting, plateau,
    eval_with_autograd,
)


