"""Networks and weight-initialisation schemes: pure nn.Module code, no file access."""
from model.init import INIT_SCHEMES, init_weights
from model.lenet import LeNet
from model.mlp import MLP, mlp_classifier
from model.resnet import CourseResNet, ResNet18
from model.toy import ToyModel

# The image classifiers a checkpoint can name (its "model_class"): tools.inspect_run rebuilds them by name.
CLASSIFIERS = {"LeNet": LeNet, "ResNet18": ResNet18, "CourseResNet": CourseResNet}
# the --model of train_rmb.py
MODELS = {"lenet": LeNet, "resnet18": ResNet18, "resnet-course": CourseResNet}

__all__ = ["CLASSIFIERS", "MODELS", "LeNet", "ResNet18", "CourseResNet", "MLP", "ToyModel", "INIT_SCHEMES", "init_weights",
           "mlp_classifier"]
