"""The course's first lessons as printed numbers: autograd's worked example, and what an nn.Module holds.

    python -m tools.basics_lab                        # both sections
    python -m tools.basics_lab --section parameters

autograd: x = [3, 4] with requires_grad, out = mean(3 x^2) = 37.5, and after out.backward() x.grad =
d out / dx = 3x = [9, 12], checked by hand. parameters: a conv, a BatchNorm and a linear layer, listed by
parameters() (tensors only), named_parameters() (with names) and state_dict() (names and tensors,
buffers included): a BatchNorm layer's running_mean, running_var and num_batches_tracked are in its
state_dict, saved and loaded with the model, though they are not parameters and no optimizer moves them.
"""
import torch
from torch import nn

SECTIONS = ("autograd", "parameters")


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


def report(section: str) -> list[str]:
    if section == "autograd":
        r = autograd_example()
        return ["autograd: x = [3, 4] (requires_grad), z = 3 x^2, out = z.mean()",
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
