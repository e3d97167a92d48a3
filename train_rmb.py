"""Train LeNet to tell 1-yuan from 100-yuan banknotes, and watch it learn in TensorBoard.

    python train_rmb.py                                    # generated data (or data/RMB_data), 10 epochs
    python train_rmb.py --data-dir data/RMB_data --epochs 20 --device cuda
    python train_rmb.py --resume auto                      # continue the latest run of this --run-name
    tensorboard --logdir runs                              # curves, histograms, graph, diagnosis

Each run writes runs/<YYYYmmdd-HHMMSS>_<run-name>/: TensorBoard events, metrics.json, loss_curve.png,
checkpoint_last.pt and checkpoint_best.pt. The script follows the course's five steps: data, model,
loss, optimizer, and the training loop; the machinery behind each step lives in tools/ and model/.
"""
import math

import torch
from torch import nn

from model import INIT_SCHEMES, LeNet
from tools.activations import activation_stats
from tools.checkpoint import Checkpointer
from tools.cli import (
    ArgumentParser,
    add_common_args,
    add_data_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_script,
    seed_everything,
)
from tools.distributed import check_weights_agree, distributed, eval_loader, train_loader, wrap
from tools.engine import evaluate, train_one_epoch
from tools.interrupt import stop_on_signals
from tools.lr_schedules import SCHEDULERS, build_scheduler, step_scheduler
from tools.monitor import TrainingMonitor
from tools.report import report
from tools.rmb_dataset import load_splits
from tools.run_folder import RunFolder
from tools.train_state import TrainState

# A resumed run goes on with these flags as it was started (it says so when yours differ).
RESUMED_FLAGS = ("data_dir", "batch_size", "lr", "momentum", "scheduler", "step_size", "gamma", "init", "norm",
                 "seed")
HPARAMS = ("epochs", "batch_size", "lr", "momentum", "scheduler", "step_size", "gamma", "init", "norm", "seed")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the train split")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per training step")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate")
    parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="step",
                        help="learning-rate schedule, stepped once per epoch (see tools/lr_schedules.py)")
    parser.add_argument("--step-size", type=positive_int, default=10, help="StepLR: epochs between lr decays")
    parser.add_argument("--gamma", type=positive_float, default=0.1, help="StepLR: lr factor at each decay")
    parser.add_argument("--init", choices=INIT_SCHEMES, default="course",
                        help="weight init: the course's LeNet scheme, PyTorch's default, xavier, kaiming, normal")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes (0: load in the main process; images are decoded once)")
    parser.add_argument("--log-interval", type=positive_int, default=10,
                        help="iterations between gradient-norm logs")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="a checkpoint or run folder to continue, or auto: the latest run of --run-name")
    parser.add_argument("--no-monitor", action="store_true",
                        help="no weight/gradient histograms, norms or diagnosis (to measure their cost)")
    return add_common_args(add_data_args(parser), name="lenet")


def main(args) -> dict:
    """Train, validate every epoch, test the best checkpoint; on one process or, under torchrun, on many."""
    with distributed(args.device) as (dist, device), RunFolder.open(args, dist, RESUMED_FLAGS, HPARAMS) as run:
        seed_everything(args.seed + dist.rank)  # the same init on every rank (DDP copies rank 0's), own augmentation

        # 1. Data: every photo decoded and resized once; only the random crop and grayscale run each epoch
        data = load_splits(args.data_dir, args.norm, args.cache_dir, args.strict)
        train_batches = train_loader(data["train"], args.batch_size, args.seed, args.workers)
        valid_batches = eval_loader(data["valid"])
        num_classes = len(data["classes"])

        # 2. Model
        model = LeNet(classes=num_classes).initialize_weights(args.init).to(device)

        # 3. Loss
        criterion = nn.CrossEntropyLoss()

        # 4. Optimizer and learning-rate schedule
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        scheduler = build_scheduler(args.scheduler, optimizer, args.epochs, args.step_size, args.gamma)

        # 5. Train: each epoch trains, evaluates, judges, steps the schedule, logs and saves a checkpoint
        example = data["valid"][0][0][None].to(device)  # one image: the graph, first pictures, forward order
        run.start(model, example, data, device)         # the run folder and TensorBoard, where training starts
        monitor = TrainingMonitor(model, run.writer, args.log_interval, enabled=run.is_main and not args.no_monitor,
                                  classes=num_classes)  # gradient norms, histograms, the verdict
        monitor.set_forward_order(example)
        state = TrainState()                            # epochs and steps done, the best epoch, the history
        facts = {"classes": data["classes"], "norm": {"mean": data["mean"], "std": data["std"]}}
        checkpointer = Checkpointer(run, train_batches.generator, facts, model=model, optimizer=optimizer,
                                    scheduler=scheduler, monitor=monitor, state=state)
        checkpointer.restore(run.checkpoint)  # resuming: every state as saved, the random states last
        train_model = wrap(model, device)     # under torchrun: DistributedDataParallel
        with stop_on_signals() as stop:
            for _ in range(state.epoch, args.epochs):
                train = train_one_epoch(train_model, train_batches, criterion, optimizer, device, state, monitor, stop)
                if train["diverged"]:
                    run.stop_diverged(*monitor.nonfinite)
                if not train["complete"]:  # a signal, on this rank or another: save where we are, exactly
                    checkpointer.save()
                    run.stop_signalled(stop, state)
                with activation_stats(model, monitor.enabled, (nn.ReLU,), moments=False) as acts:  # dead units
                    valid = evaluate(model, valid_batches, criterion, device, num_classes)
                verdict = monitor.end_epoch(state.global_step, train["loss"], acts.result())
                if not math.isfinite(valid["loss"]):  # a finite train loss, but weights thrown too far
                    run.stop_diverged(state.global_step, f"non-finite valid loss after step {state.global_step}")
                lr = step_scheduler(scheduler, valid["loss"])
                is_best = state.end_epoch(valid)
                run.log_epoch(state, lr, verdict)
                checkpointer.save(best=is_best)

            # The best checkpoint, tested and explained: accuracy, confusion matrix, Grad-CAM, feature maps, kernels
            run.say(check_weights_agree(model))  # under torchrun: every rank ended with the same weights
            checkpointer.load_best()
            split = "test" if data["test"] else "valid"
            test = report(model, data, split, device, run.pictures_dir, run.writer, state.global_step,
                          f"{split}, best epoch {state.best['epoch']}")
            return run.finish(state, test, stop)  # a signal now waits until the results are written


if __name__ == "__main__":
    run_script(main, get_args_parser())
