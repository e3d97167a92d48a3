"""Weight-initialisation schemes shared by LeNet, train_rmb.py --init and init_demo.py.

Each scheme keeps the variance of the signal roughly constant from layer to layer, for the activation it
is meant for: Xavier (Glorot) for tanh / sigmoid, Kaiming (He) for ReLU, which zeroes half of its input
and so halves the variance; Kaiming doubles the weights' variance to make up for it.
"""
import math

import torch
from torch import nn

INIT_SCHEMES = ("default", "course", "xavier", "kaiming", "normal")


def xavier_uniform_manual_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Xavier uniform by hand: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)). In place; returns weight."""
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def kaiming_normal_manual_(weight: torch.Tensor) -> torch.Tensor:
    """Kaiming normal by hand for ReLU: N(0, 2 / fan_in). In place; returns weight."""
    fan_in = weight[0].numel()
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2.0 / fan_in))


def init_weights(model: nn.Module, scheme: str = "course") -> nn.Module:
    """Re-initialise every conv, linear and batch-norm layer of `model` in place; returns the model.

    schemes:
      default  keep PyTorch's own init (Kaiming uniform with a=sqrt(5) for conv and linear layers);
      course   the course's LeNet scheme: conv xavier_normal_, linear normal_(0, 0.1); the course's
               listing says normal_(0, 0.01), with which LeNet's three linear layers (fan-in 400, 120,
               84) shrink the signal 5 to 11 times each and train_rmb.py stays at chance for 10 epochs;
      xavier   xavier_uniform_ with the ReLU gain for conv and linear layers;
      kaiming  kaiming_normal_ (fan_in, ReLU) for conv and linear layers;
      normal   normal_(0, 1) everywhere: the naive init that makes activations explode.
    Biases are set to 0 and batch-norm weights to 1 by every scheme but `default`.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose from {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "course":
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_normal_(m.weight)
                else:
                    nn.init.normal_(m.weight, 0.0, 0.1)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
