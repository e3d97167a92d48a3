"""Networks and weight-initialisation schemes: pure nn.Module code, no file access."""
from model.init import INIT_SCHEMES, init_weights
from model.lenet import LeNet
from model.mlp import MLP, mlp_classifier
from model.toy import ToyModel

__all__ = ["LeNet", "MLP", "ToyModel", "INIT_SCHEMES", "init_weights", "mlp_classifier"]
