"""The optimizer lab: the course's optimizer and scheduler APIs on one small weight, with the course's numbers.

    python -m tools.optim_lab               # every section, the saved optimizer state in runs/<time>_optim_lab/
    python -m tools.optim_lab --section state_dict

Sections, in the course's order: step and zero_grad (0.6614 -> 0.5614, the weight the optimizer holds is
the tensor you gave it), add_param_group, state_dict and load_state_dict (SGD's momentum buffer after 10
steps of gradient 1: 6.5132), the scheduler's base class (base_lrs, last_epoch, step, get_last_lr), and
RMSprop fitting a cubic polynomial, with its loss log. The course sets no seed for that fit; here it is
drawn after torch.manual_seed(--seed), so the log is the same on every run.
"""
import torch
from torch import optim

SECTIONS = ("step", "param_groups", "state_dict", "scheduler", "rmsprop")
MOMENTUM_STEPS = 10   # the course's: the momentum buffer after 10 steps is sum(0.9^k, k < 10) = 6.5132
FIT_STEPS = 500       # RMSprop iterations of the polynomial fit, its loss printed every LOG_EVERY
LOG_EVERY = 100


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
    scheduler.step() (once per epoch, after optimizer.step()), last_epoch and get_last_lr()."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = optim.SGD([weight], lr=0.1)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    rows = [{"base_lrs": scheduler.base_lrs, "last_epoch": scheduler.last_epoch, "lr": scheduler.get_last_lr()}]
    for _ in range(7):
        optimizer.step()
        scheduler.step()
        rows.append({"last_epoch": scheduler.last_epoch, "lr": scheduler.get_last_lr()})
    return rows


def rmsprop_fit(seed: int) -> dict:
    """RMSprop (lr 0.01) fits y = w3 x^3 + w2 x^2 + w1 x + b to 100 noisy points of 0.5x^3 - x^2 + 2x + 1 on
    [-2, 2]; returns the MSE every LOG_EVERY steps and the fitted coefficients."""
    torch.manual_seed(seed)
    x = torch.rand(100, 1) * 4 - 2
    y = 0.5 * x ** 3 - x ** 2 + 2 * x + 1 + 0.1 * torch.randn(100, 1)
    features = torch.cat([x ** 3, x ** 2, x], dim=1)
    w = torch.zeros(3, 1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = optim.RMSprop([w, b], lr=0.01)
    log = []
    for step in range(1, FIT_STEPS + 1):
        loss = torch.mean((features @ w + b - y) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % LOG_EVERY == 0 or step == 1:
            log.append((step, loss.item()))
    return {"log": log, "w": w.detach().flatten().tolist(), "b": b.item()}


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
    if section == "scheduler":
        rows = scheduler_basics()
        lines = ["scheduler base class (StepLR, step_size 3, gamma 0.1, base lr 0.1)",
                 f"  base_lrs {rows[0]['base_lrs']}, last_epoch {rows[0]['last_epoch']}, get_last_lr() {rows[0]['lr']}"]
        return lines + [f"  after step() {i}: last_epoch {r['last_epoch']}, get_last_lr() [{r['lr'][0]:.4g}]"
                        for i, r in enumerate(rows[1:], start=1)]
    r = rmsprop_fit(seed)
    return ([f"RMSprop fit of a cubic (lr 0.01, seed {seed}): the MSE"] +
            [f"  step {step:4d}  loss {loss:.4f}" for step, loss in r["log"]] +
            [f"  fitted: {r['w'][0]:.3f} x^3 {r['w'][1]:+.3f} x^2 {r['w'][2]:+.3f} x {r['b']:+.3f}  "
             "(drawn from 0.5 x^3 - 1 x^2 + 2 x + 1, noise 0.1)"])


def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, add_common_args

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.optim_lab")
    parser.add_argument("--section", choices=SECTIONS, action="append", default=None,
                        help="a section to run (repeatable; default: all, in the course's order)")
    return add_common_args(parser, name="optim_lab")


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
