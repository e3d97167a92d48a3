"""The optimizer lab: the course's optimizer and scheduler APIs on one small weight, with the course's numbers.

    python -m tools.optim_lab               # every section, the saved optimizer state in runs/<time>_optim_lab/
    python -m tools.optim_lab --section state_dict

Sections, in the course's order: step and zero_grad (0.6614 -> 0.5614, the weight the optimizer holds is
the tensor you gave it), add_param_group, state_dict and load_state_dict (SGD's momentum buffer after 10
steps of gradient 1: 6.5132), the optimizer's `defaults`, the scheduler's base class (base_lrs, last_epoch,
_step_count, step, get_last_lr), `step(closure)` with LBFGS, and the course's RMSprop fit: a cubic
polynomial fitted to sin(x) on 2000 points of [-pi, pi], the summed MSE, lr 1e-3, 1000 steps, its loss
printed every 100. The course draws the polynomial's initial weights unseeded (its log runs from about
26215 at step 100 to 161); here they are drawn after torch.manual_seed(--seed), and the fit runs in
float64, so the log is the same on every run. Near the minimum RMSprop circles it (its steps stay about
lr in size), and where it stands at step 1000 depends on the last bits of every sum: there the last
printed digit may differ from one CPU to another.
"""
import torch
from torch import optim

SECTIONS = ("step", "param_groups", "state_dict", "defaults", "scheduler", "closure", "rmsprop")
MOMENTUM_STEPS = 10   # the course's: the momentum buffer after 10 steps is sum(0.9^k, k < 10) = 6.5132
FIT_POINTS = 2000     # the course's RMSprop fit: sin(x) at 2000 points of [-pi, pi] ...
FIT_STEPS = 1000      # ... 1000 RMSprop steps at lr 1e-3, the summed MSE printed every LOG_EVERY
LOG_EVERY = 100
LBFGS_STEPS = 3


def fmt(t: torch.Tensor) -> str:
    """A tensor's values at 4 decimals, as the course prints them."""
    return str([[round(v, 4) for v in row] for row in t.tolist()] if t.dim() == 2 else [round(v, 4) for v in t.tolist()])


def step_and_zero_grad(seed: int) -> dict:
    """optimizer.step() on a 2x2 weight whose gradient is all ones (SGD, lr 0.1: every value falls by 0.1);
    then zero_grad(). PyTorch 2 sets the gradient to None by default; the course's zeros are
    zero_grad(set_to_none=False)."""
    torch.manual_seed(seed)
    weight = torch.randn((2, 2), requires_grad=True)
    weight.grad = torch.ones((2, 2))
    optimizer = optim.SGD([weight], lr=0.1)
    before = weight.detach().clone()
    optimizer.step()
    held = optimizer.param_groups[0]["params"][0]
    grad_before = weight.grad.clone()
    optimizer.zero_grad(set_to_none=False)
    zeroed = weight.grad.clone()
    optimizer.zero_grad()  # PyTorch 2's default
    return {"before": before, "after": weight.detach().clone(), "same_tensor": held is weight,
            "same_id": id(held) == id(weight), "grad_before": grad_before, "grad_zeroed": zeroed,
            "grad_default": weight.grad}


def param_groups(seed: int) -> list[dict]:
    """add_param_group: a second weight with its own learning rate; returns each group's lr and shapes."""
    torch.manual_seed(seed)
    weight = torch.randn((2, 2), requires_grad=True)
    optimizer = optim.SGD([weight], lr=0.1)
    w2 = torch.randn((3, 3), requires_grad=True)
    optimizer.add_param_group({"params": w2, "lr": 0.0001})
    return [{"lr": g["lr"], "shapes": [tuple(p.shape) for p in g["params"]], "momentum": g["momentum"]}
            for g in optimizer.param_groups]


def state_dict(seed: int, path) -> dict:
    """SGD with momentum 0.9, 10 steps with gradient ones; its state_dict saved to `path`, loaded into a new
    optimizer (over the same weight), and the momentum buffer read back from both."""
    torch.manual_seed(seed)
    weight = torch.randn((2, 2), requires_grad=True)
    weight.grad = torch.ones((2, 2))
    optimizer = optim.SGD([weight], lr=0.1, momentum=0.9)
    for _ in range(MOMENTUM_STEPS):
        optimizer.step()
    state = optimizer.state_dict()
    torch.save(state, path)
    restored = optim.SGD([weight], lr=0.1, momentum=0.9)
    restored.load_state_dict(torch.load(path, weights_only=True))
    buffer = state["state"][0]["momentum_buffer"]
    return {"keys": list(state), "buffer": buffer, "restored": restored.state_dict()["state"][0]["momentum_buffer"],
            "by_hand": sum(0.9 ** k for k in range(MOMENTUM_STEPS)), "param_groups": state["param_groups"]}


def scheduler_basics() -> list[dict]:
    """The scheduler's base class on StepLR(step_size=3, gamma=0.1) over an SGD at lr 0.1: base_lrs, and per
    scheduler.step() (once per epoch, after optimizer.step()), last_epoch, _step_count (the steps taken,
    counting the one its constructor takes; PyTorch 1 kept such a count on the optimizer too,
    optimizer._step_count, which PyTorch 2 no longer has) and get_last_lr()."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = optim.SGD([weight], lr=0.1)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    rows = [{"base_lrs": scheduler.base_lrs, "last_epoch": scheduler.last_epoch, "lr": scheduler.get_last_lr(),
             "step_count": scheduler._step_count}]
    for _ in range(7):
        optimizer.step()
        scheduler.step()
        rows.append({"last_epoch": scheduler.last_epoch, "lr": scheduler.get_last_lr(),
                     "step_count": scheduler._step_count})
    return rows


def optimizer_defaults() -> dict:
    """optimizer.defaults: the hyper-parameters given to the constructor, which every param group added
    later inherits unless it sets its own (SGD at lr 0.1, momentum 0.9)."""
    optimizer = optim.SGD([torch.zeros(2, 2, requires_grad=True)], lr=0.1, momentum=0.9)
    return optimizer.defaults


def lbfgs_closure() -> dict:
    """step(closure) with LBFGS, which evaluates the loss several times per step: minimise (w - 3)^2 summed
    over a 2-vector from w = 0 (float64: exact on every CPU). Returns, per step, the loss the step
    returned, the closure's calls so far, and w after it."""
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = optim.LBFGS([w], lr=1, max_iter=5)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = ((w - 3) ** 2).sum()
        loss.backward()
        return loss

    rows = []
    for _ in range(LBFGS_STEPS):
        loss = optimizer.step(closure)
        rows.append({"loss": loss.item(), "calls": calls, "w": w.detach().tolist()})
    return {"rows": rows}


def rmsprop_fit(seed: int) -> dict:
    """The course's fit: y = a + b x + c x^2 + d x^3 (nn.Linear(3, 1) on x, x^2, x^3) to sin(x) on FIT_POINTS
    points of [-pi, pi], the MSE summed (MSELoss(reduction='sum')), RMSprop lr 1e-3, FIT_STEPS steps; the
    weights drawn after manual_seed(seed), the fit in float64 (the same digits on every CPU). Returns the
    loss every LOG_EVERY steps (at steps 100, 200, ..., before that step's update, as the course prints it)
    and the fitted coefficients."""
    torch.manual_seed(seed)
    x = torch.linspace(-torch.pi, torch.pi, FIT_POINTS, dtype=torch.float64)
    y = torch.sin(x)
    powers = x.unsqueeze(-1).pow(torch.tensor([1, 2, 3]))
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1)).double()
    loss_fn = torch.nn.MSELoss(reduction="sum")
    optimizer = optim.RMSprop(model.parameters(), lr=1e-3)
    log = []
    for t in range(FIT_STEPS):
        loss = loss_fn(model(powers), y)
        if t % LOG_EVERY == LOG_EVERY - 1:
            log.append((t + 1, loss.item()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    linear = model[0]
    return {"log": log, "a": linear.bias.item(), "bcd": linear.weight.detach().flatten().tolist()}


def report(section: str, seed: int, run_dir) -> list[str]:
    """The printed lines of one section."""
    if section == "step":
        r = step_and_zero_grad(seed)
        return ["step and zero_grad (SGD, lr 0.1, gradient all ones)",
                f"  weight before step: {fmt(r['before'])}", f"  weight after step:  {fmt(r['after'])}",
                f"  the optimizer holds the tensor you gave it: {r['same_tensor']} (same id: {r['same_id']})",
                f"  grad before zero_grad: {fmt(r['grad_before'])}",
                f"  grad after zero_grad(set_to_none=False): {fmt(r['grad_zeroed'])}",
                f"  grad after zero_grad() (PyTorch 2's default): {r['grad_default']}"]
    if section == "param_groups":
        groups = param_groups(seed)
        return ["add_param_group (a 3x3 weight at lr 0.0001 beside the 2x2 one at 0.1)",
                f"  groups: {len(groups)}"] + [f"  group {i}: lr {g['lr']}, params {g['shapes']}"
                                                for i, g in enumerate(groups)]
    if section == "state_dict":
        path = run_dir / "optimizer_state_dict.pt"
        r = state_dict(seed, path)
        return [f"state_dict (SGD, momentum 0.9, {MOMENTUM_STEPS} steps of gradient ones): keys {r['keys']}",
                f"  momentum buffer: {fmt(r['buffer'])}  (by hand: sum of 0.9^k, k < {MOMENTUM_STEPS} = {r['by_hand']:.4f})",
                f"  saved to {path}; loaded into a new optimizer: {fmt(r['restored'])}"]
    if section == "defaults":
        return ["optimizer.defaults (SGD(lr=0.1, momentum=0.9)): what a param group added later inherits",
                f"  {optimizer_defaults()}"]
    if section == "scheduler":
        rows = scheduler_basics()
        lines = ["scheduler base class (StepLR, step_size 3, gamma 0.1, base lr 0.1)",
                 f"  base_lrs {rows[0]['base_lrs']}, last_epoch {rows[0]['last_epoch']}, _step_count "
                 f"{rows[0]['step_count']}, get_last_lr() {rows[0]['lr']}"]
        return lines + [f"  after step() {i}: last_epoch {r['last_epoch']}, _step_count {r['step_count']}, "
                        f"get_last_lr() [{r['lr'][0]:.4g}]" for i, r in enumerate(rows[1:], start=1)]
    if section == "closure":
        rows = lbfgs_closure()["rows"]
        return ["step(closure) with LBFGS (lr 1, max_iter 5): minimise sum((w - 3)^2) from w = [0, 0]"] + [
            f"  step {i}: loss {r['loss']:.4g} (the closure's first evaluation), closure called {r['calls']} times "
            f"so far, w = [{r['w'][0]:.4f}, {r['w'][1]:.4f}]" for i, r in enumerate(rows, start=1)]
    r = rmsprop_fit(seed)
    a, b, c, d = (round(v, 3) + 0.0 for v in (r["a"], *r["bcd"]))  # + 0.0: no "-0.000"
    return ([f"RMSprop fit of sin(x) by a cubic (the course's: 2000 points, summed MSE, lr 1e-3; seed {seed}, "
             "float64): the loss"] +
            [f"  step {step:4d}  loss {loss:.1f}" for step, loss in r["log"]] +
            [f"  fitted: y = {a:.3f} {b:+.3f} x {c:+.3f} x^2 {d:+.3f} x^3"])


def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, add_common_args

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.optim_lab")
    parser.add_argument("--section", choices=SECTIONS, action="append", default=None,
                        help="a section to run (repeatable; default: all, in the course's order)")
    return add_common_args(parser, name="optim_lab", device=False)


def main(args) -> dict:
    from tools.training.run_dirs import new_run_dir

    run_dir = new_run_dir(args.logdir, args.run_name)
    printed = {}
    for section in args.section or SECTIONS:
        printed[section] = report(section, args.seed, run_dir)
        print("\n".join(printed[section]))
    return {"run_dir": str(run_dir), "printed": printed}


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
