"""The course's LeNet-on-RMB pipeline, for comparison only: every photo decoded and resized every epoch.

    python bench/course_style_train.py --data-dir ../shared/data/rmb_real/RMB_data --epochs 10

What the course's train_lenet.py does, kept as it is: a Dataset that opens each JPEG with PIL in
__getitem__, torchvision's Resize, RandomCrop, RandomGrayscale, ToTensor and Normalize, SGD with
momentum, StepLR, and TensorBoard's add_histogram over every parameter's weights and gradients each
epoch. bench/bench_train.py times it beside train_rmb.py. (Its own split: the same 80/10/10 sizes.)
"""
import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

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
    writer = SummaryWriter(tempfile.mkdtemp(prefix="course_style_"))
    iteration = 0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        correct = total = 0
        net.train()
        for inputs, labels in train_loader:
            iteration += 1
            outputs = net(inputs)
            optimizer.zero_grad()
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            correct += (outputs.argmax(1) == labels).sum().item()
            total += labels.size(0)
            writer.add_scalars("Loss", {"Train": loss.item()}, iteration)
            writer.add_scalars("Accuracy", {"Train": correct / total}, iteration)
        for name, param in net.named_parameters():
            writer.add_histogram(name + "_grad", param.grad, epoch)
            writer.add_histogram(name + "_data", param, epoch)
        scheduler.step()
        net.eval()
        valid_correct = valid_total = 0
        with torch.no_grad():
            for inputs, labels in valid_loader:
                outputs = net(inputs)
                valid_correct += (outputs.argmax(1) == labels).sum().item()
                valid_total += labels.size(0)
        print(f"epoch {epoch + 1} valid acc {valid_correct / valid_total:.2%} {time.perf_counter() - started:.3f} s")
    writer.close()


if __name__ == "__main__":
    main()
