"""The course's first lessons as printed numbers: the computational graph, autograd, what an nn.Module
holds, and whose gradients zero_grad() clears.

    python -m tools.basics_lab                        # every section
    python -m tools.basics_lab --section graph --section zero_grad

graph: the course's own graph, y = (x + w)(w + 1) at w = 1, x = 2: y.backward() gives w.grad = 5 and
x.grad = 2; the leaves (w, x) keep their gradients, the intermediate a, b, y do not unless retain_grad().
autograd: a second example of this lab's (not the course's): x = [3, 4] with requires_grad,
out = mean(3 x^2) = 37.5, and after out.backward() x.grad = d out / dx = 3x = [9, 12], checked by hand.
parameters: a conv, a BatchNorm and a linear layer, listed by
parameters() (tensors only), named_parameters() (with names) and state_dict() (names and tensors,
buffers included): a BatchNorm layer's running_mean, running_var and num_batches_tracked are in its
state_dict, saved and loaded with the model, though they are not parameters and no optimizer moves them.
zero_grad: model.zero_grad() clears every parameter's gradient; optimizer.zero_grad() only those of the
parameters the optimizer holds. They are the same when the optimizer holds them all.
"""
import torch
from torch import nn

SECTIONS = ("graph", "autograd", "parameters", "zero_grad")


def course_graph() -> dict:
    """The course's graph: a = w + x, b = w + 1, y = a * b at w = 1, x = 2. After y.backward(): the
    gradients of the leaves (dy/dw = b + a = 5, dy/dx = b = 2) and a's, kept by a.retain_grad()."""
    w = torch.tensor([1.0], requires_grad=True)
    x = torch.tensor([2.0], requires_grad=True)
    a = torch.add(w, x)
    a.retain_grad()
    b = torch.add(w, 1)
    y = torch.mul(a, b)
    y.backward()
    tensors = {"w": w, "x": x, "a": a, "b": b, "y": y}
    return {"y": y.item(), "is_leaf": {n: t.is_leaf for n, t in tensors.items()},
            # a non-leaf's .grad is None unless retained (reading it would only add PyTorch's warning)
            "grad": {n: t.grad.item() if (t.is_leaf or t.retains_grad) and t.grad is not None else None
                     for n, t in tensors.items()},
            "grad_fn": {n: type(t.grad_fn).__name__ if t.grad_fn else None for n, t in tensors.items()},
            "by_hand": {"w": b.item() + a.item(), "x": b.item()}}


def autograd_example() -> dict:
    """out = mean(3 x^2) at x = [3, 4]; its value and x.grad, with the gradient by hand (3 x)."""
    x = torch.tensor([3.0, 4.0], requires_grad=True)
    z = x * x * 3
    out = z.mean()
    out.backward()
    return {"x": x.tolist(), "z": z.tolist(), "out": out.item(), "grad": x.grad.tolist(),
            "by_hand": [3 * v for v in x.tolist()], "grad_fn": type(out.grad_fn).__name__}


def small_net() -> nn.Sequential:
    """conv (3 -> 4 channels, 3x3), BatchNorm2d(4), ReLU, flatten, linear (4*4*4 -> 2)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


def what_a_module_holds() -> dict:
    """The names and shapes of parameters(), named_parameters(), state_dict() and the buffers, of small_net."""
    net = small_net()
    state = net.state_dict()
    named = dict(net.named_parameters())
    return {"parameters": [tuple(p.shape) for p in net.parameters()],
            "named_parameters": {n: tuple(p.shape) for n, p in named.items()},
            "state_dict": {n: tuple(t.shape) for n, t in state.items()},
            "buffers": {n: tuple(b.shape) for n, b in net.named_buffers()},
            "only_in_state_dict": [n for n in state if n not in named]}


def zero_grad_difference() -> dict:
    """Two Linear layers, an optimizer over the first only; after a backward pass, which layers still
    hold a gradient after optimizer.zero_grad(), and after model.zero_grad()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)

    def holding() -> list[str]:
        return [name for name, p in model.named_parameters() if p.grad is not None]

    model(torch.ones(1, 2)).sum().backward()
    before = holding()
    optimizer.zero_grad()
    after_optimizer = holding()
    model.zero_grad()
    return {"before": before, "after_optimizer": after_optimizer, "after_model": holding()}


def report(section: str) -> list[str]:
    if section == "graph":
        r = course_graph()
        return ["the course's graph: w = 1, x = 2 (requires_grad), a = w + x, b = w + 1, y = a * b",
                f"  y {r['y']}; is_leaf {r['is_leaf']}",
                f"  after y.backward(): w.grad {r['grad']['w']}, x.grad {r['grad']['x']}  (by hand: dy/dw = b + a = "
                f"{r['by_hand']['w']}, dy/dx = b = {r['by_hand']['x']})",
                f"  a.grad {r['grad']['a']} (kept by a.retain_grad()), b.grad {r['grad']['b']}, y.grad {r['grad']['y']}: "
                "an intermediate tensor's gradient is freed",
                f"  grad_fn: a {r['grad_fn']['a']}, b {r['grad_fn']['b']}, y {r['grad_fn']['y']}, w {r['grad_fn']['w']}"]
    if section == "zero_grad":
        r = zero_grad_difference()
        return ["zero_grad: Linear(2, 2) then Linear(2, 1); the optimizer holds the first layer only",
                f"  after backward(), gradients held by: {r['before']}",
                f"  after optimizer.zero_grad(): {r['after_optimizer']}  (the layer it does not hold keeps its gradient)",
                f"  after model.zero_grad(): {r['after_model']}"]
    if section == "autograd":
        r = autograd_example()
        return ["autograd (this lab's example): x = [3, 4] (requires_grad), z = 3 x^2, out = z.mean()",
                f"  z {r['z']}, out {r['out']} (its grad_fn: {r['grad_fn']})",
                f"  after out.backward(): x.grad {r['grad']}  (by hand: d out/dx = 3x = {r['by_hand']})"]
    r = what_a_module_holds()
    return (["what a module holds: Conv2d(3, 4, 3), BatchNorm2d(4), ReLU, Flatten, Linear(64, 2)",
             f"  parameters(): {len(r['parameters'])} tensors, shapes {r['parameters']}",
             f"  named_parameters(): {list(r['named_parameters'])}",
             f"  state_dict(): {list(r['state_dict'])}",
             f"  buffers (in state_dict, not parameters; saved and loaded, moved by no optimizer): {r['only_in_state_dict']}"])


def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.basics_lab")
    parser.add_argument("--section", choices=SECTIONS, action="append", default=None,
                        help="a section to run (repeatable; default: both)")
    return parser


def main(args) -> dict:
    printed = {section: report(section) for section in args.section or SECTIONS}
    print("\n".join(line for lines in printed.values() for line in lines))
    return printed


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
