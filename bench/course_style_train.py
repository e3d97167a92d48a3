"""The course's LeNet-on-RMB pipeline, for comparison only: every photo decoded and resized every epoch.

    python bench/course_style_train.py --data-dir ../shared/data/rmb_real/RMB_data --epochs 10

What the course's TensorBoard lesson (loss_acc_weights_grad.py, its train_lenet.py with monitoring)
does, kept as it is: matplotlib's pyplot imported at the top, a Dataset that opens each JPEG with PIL
in __getitem__, torchvision's Resize, RandomCrop, RandomGrayscale, ToTensor and Normalize, SGD with
momentum, StepLR, the loss and accuracy every iteration and every parameter's weights and gradients
each epoch in TensorBoard (add_scalars, add_histogram), a line printed every 10 iterations and after
each validation, and at the end the train and valid loss curves drawn with pyplot. Two changes, so
that it runs unattended: the curves are saved to a PNG in its temporary folder where the course calls
plt.show() (a window), and the data is split in memory (the same 80/10/10 sizes) where the course
reads a split written to disk. bench/bench_train.py times it beside train_rmb.py.
"""
import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

matplotlib.use("Agg")  # no window: the curves go to a PNG
from matplotlib import pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import LeNet  # noqa: E402


class CourseRMBDataset(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __getitem__(self, index):
        path, label = self.samples[index]
        img = Image.open(path).convert("RGB")
        return self.transform(img), label

    def __len__(self):
        return len(self.samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    samples = []
    for label, name in enumerate(sorted(os.listdir(args.data_dir))):
        samples += [(str(args.data_dir / name / f), label) for f in sorted(os.listdir(args.data_dir / name))]
    random.shuffle(samples)
    n_train, n_valid = int(0.8 * len(samples)), int(0.1 * len(samples))
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.Resize((32, 32)), transforms.RandomCrop(32, padding=4),
                                   transforms.RandomGrayscale(p=0.8), transforms.ToTensor(), norm])
    valid_tf = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), norm])
    train_loader = DataLoader(CourseRMBDataset(samples[:n_train], train_tf), batch_size=16, shuffle=True)
    valid_loader = DataLoader(CourseRMBDataset(samples[n_train:n_train + n_valid], valid_tf), batch_size=16)

    net = LeNet(classes=2).initialize_weights()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)
    out = Path(tempfile.mkdtemp(prefix="course_style_"))
    writer = SummaryWriter(str(out))
    train_curve, valid_curve, iteration, log_interval = [], [], 0, 10
    for epoch in range(args.epochs):
        loss_mean = correct = total = 0.0
        net.train()
        for i, (inputs, labels) in enumerate(train_loader):
            iteration += 1
            outputs = net(inputs)
            optimizer.zero_grad()
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).squeeze().sum().numpy()
            loss_mean += loss.item()
            train_curve.append(loss.item())
            if (i + 1) % log_interval == 0:
                print(f"Training:Epoch[{epoch:0>3}/{args.epochs:0>3}] Iteration[{i + 1:0>3}/{len(train_loader):0>3}] "
                      f"Loss: {loss_mean / log_interval:.4f} Acc:{correct / total:.2%}")
                loss_mean = 0.0
            writer.add_scalars("Loss", {"Train": loss.item()}, iteration)
            writer.add_scalars("Accuracy", {"Train": correct / total}, iteration)
        for name, param in net.named_parameters():
            writer.add_histogram(name + "_grad", param.grad, epoch)
            writer.add_histogram(name + "_data", param, epoch)
        scheduler.step()
        correct_val = total_val = loss_val = 0.0
        net.eval()
        with torch.no_grad():
            for j, (inputs, labels) in enumerate(valid_loader):
                outputs = net(inputs)
                loss = criterion(outputs, labels)
                _, predicted = torch.max(outputs.data, 1)
                total_val += labels.size(0)
                correct_val += (predicted == labels).squeeze().sum().numpy()
                loss_val += loss.item()
            valid_curve.append(loss.item())
            print(f"Valid:\t Epoch[{epoch:0>3}/{args.epochs:0>3}] Iteration[{j + 1:0>3}/{len(valid_loader):0>3}] "
                  f"Loss: {loss_val:.4f} Acc:{correct_val / total_val:.2%}")
            writer.add_scalars("Loss", {"Valid": np.mean(valid_curve)}, iteration)
            writer.add_scalars("Accuracy", {"Valid": correct_val / total_val}, iteration)
    writer.close()

    valid_x = np.arange(1, len(valid_curve) + 1) * len(train_loader)  # valid's points at the epochs' ends
    plt.plot(range(len(train_curve)), train_curve, label="Train")
    plt.plot(valid_x, valid_curve, label="Valid")
    plt.legend(loc="upper right")
    plt.ylabel("loss value")
    plt.xlabel("Iteration")
    plt.savefig(out / "loss_curve.png")  # the course: plt.show()


if __name__ == "__main__":
    main()
