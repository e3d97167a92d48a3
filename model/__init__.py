"""Networks and weight-initialisation schemes: pure nn.Module code, no file access."""
from model.init import INIT_SCHEMES, init_weights
from model.lenet import LeNet

__all__ = ["LeNet", "INIT_SCHEMES", "init_weights"]
