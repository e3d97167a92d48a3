"""Train LeNet (or the course's ResNet) to tell 1-yuan from 100-yuan banknotes, and watch it learn in TensorBoard.

    python train_rmb.py                                    # generated data (or data/RMB_data), 10 epochs
    python train_rmb.py --data-dir data/RMB_data --epochs 20 --device cuda
    python train_rmb.py --model resnet-course              # the course's ResNet (--model resnet18: ResNet-18)
    python train_rmb.py --resume auto                      # continue the latest run of this --run-name
    tensorboard --logdir runs                              # curves, histograms, graph, diagnosis

Each run writes runs/<YYYYmmdd-HHMMSS>_<run-name>/: TensorBoard events, metrics.json, loss_curve.png,
checkpoint_last.pt and checkpoint_best.pt. The script follows the course's five steps: data, model,
loss, optimizer, and the training loop; the machinery behind each step lives in tools/ and model/.
"""
import math
from pathlib import Path

from torch import nn

from model import INIT_SCHEMES, MODELS
from tools.cli.arguments import (
    ArgumentParser,
    add_common_args,
    add_data_args,
    class_weights_flag,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prefixes,
    resume_flag,
    run_script,
    seed_everything,
)
from tools.data.image_folder import class_weights, load_splits, split_tensors
from tools.monitor import TrainingMonitor
from tools.monitor.activations import DIAGNOSED, activation_stats
from tools.training.batches import eval_batches, training_batches
from tools.training.checkpoint import Checkpointer
from tools.training.distributed import check_weights_agree, distributed, wrap
from tools.training.engine import evaluate, train_one_epoch
from tools.training.interrupt import stop_on_signals
from tools.training.optim import OPTIMIZERS, build_optimizer, freeze_for_epoch, load_matching, parameter_groups
from tools.training.report import report
from tools.training.run_folder import RunFolder
from tools.training.schedules import SCHEDULERS, build_scheduler, step_scheduler
from tools.training.swa import WeightAveraging
from tools.training.train_state import TrainState

# A resumed run goes on with these flags as it was started (it says so when yours differ); a flag you give
# on resume wins, except those of FIXED_ON_RESUME, which the saved state pins.
RESUMED_FLAGS = ("model", "pipeline", "data_dir", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "nesterov", "scheduler",
                 "step_size", "gamma", "init", "norm", "seed", "label_smoothing", "class_weights", "head_lr_mult",
                 "freeze", "freeze_epochs", "swa_start", "swa_lr")
FIXED_ON_RESUME = {
    **dict.fromkeys(("scheduler", "step_size", "gamma"), "the schedule's progress is saved with the run"),
    **dict.fromkeys(("optimizer", "nesterov", "head_lr_mult"), "the optimizer's state is saved with the run"),
    **dict.fromkeys(("swa_start", "swa_lr"), "the averaged weights are saved with the run"),
    **dict.fromkeys(("init", "model"), "the weights come from the checkpoint"),
}
HPARAMS = ("model", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "scheduler", "step_size", "gamma",
           "init", "norm", "seed", "label_smoothing", "class_weights", "head_lr_mult", "freeze", "swa_start")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="lenet",
                        help="LeNet; ResNet-18 for 32x32 images (4 stages, 64-512 channels); or the course's "
                             "smaller ResNet (3 stages, 16-64 channels)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the train split")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per training step")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="the optimizers the course compares")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="learning rate")
    parser.add_argument("--momentum", type=non_negative_float, default=None,
                        help="SGD's (default 0.9, the course's) or RMSprop's (default 0) momentum")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="L2 penalty on the weights")
    parser.add_argument("--label-smoothing", type=fraction, default=0.0, help="CrossEntropyLoss's, in [0, 1)")
    parser.add_argument("--class-weights", type=class_weights_flag, default=None,
                        help="CrossEntropyLoss's weight: 'balanced' (inverse class frequency of the train split) "
                             "or one number per class, comma-separated")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="step",
                        help="learning-rate schedule, stepped once per epoch (see tools/lr_schedules.py)")
    parser.add_argument("--step-size", type=positive_int, default=10, help="StepLR: epochs between lr decays")
    parser.add_argument("--gamma", type=positive_float, default=0.1, help="StepLR: lr factor at each decay")
    parser.add_argument("--init", choices=INIT_SCHEMES, default="course",
                        help="weight init: the course's (LeNet: its scheme; ResNet: PyTorch's default), PyTorch's "
                             "default, xavier, kaiming, normal")
    parser.add_argument("--pipeline", choices=("fast", "course"), default="fast",
                        help="training batches: decoded once and augmented a batch at a time on the device, or the "
                             "course's Dataset, transforms and DataLoader (edit tools/data/course_pipeline.py)")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="processes that decode the photos when they are not in the cache yet (0: one per core)")
    parser.add_argument("--log-interval", type=positive_int, default=10,
                        help="iterations between gradient-norm logs")
    parser.add_argument("--resume", type=resume_flag, default=None, metavar="PATH|auto",
                        help="a checkpoint or run folder to continue, or auto: the latest run of --run-name")
    parser.add_argument("--no-monitor", action="store_true",
                        help="no weight/gradient histograms, norms or diagnosis (to measure their cost)")
    parser.add_argument("--finetune", type=Path, default=None, metavar="PATH",
                        help="start from these weights (a checkpoint or a state_dict) where name and shape fit")
    parser.add_argument("--freeze", type=prefixes, default=None, metavar="PREFIX[,PREFIX]",
                        help="freeze the parameters whose names start so (e.g. conv)")
    parser.add_argument("--freeze-epochs", type=non_negative_int, default=0,
                        help="unfreeze --freeze's parameters after this many epochs (0: frozen throughout)")
    parser.add_argument("--head-lr-mult", type=positive_float, default=1.0,
                        help="the last layer's learning rate is --lr times this (its own parameter group)")
    parser.add_argument("--swa-start", type=non_negative_int, default=0, metavar="EPOCH",
                        help="average the weights from this epoch on (SWA; 0: off)")
    parser.add_argument("--swa-lr", type=positive_float, default=None, help="SWALR's learning rate (default: --lr)")
    return add_common_args(add_data_args(parser), name=None)


def main(args) -> dict:
    """Train, validate every epoch, test the best checkpoint; on one process or, under torchrun, on many."""
    with distributed(args.device) as (dist, device), \
            RunFolder.open(args, dist, RESUMED_FLAGS, FIXED_ON_RESUME, HPARAMS) as run:
        seed_everything(args.seed + dist.rank)  # the same init on every rank (DDP copies rank 0's), own augmentation

        # 1. Data: every photo decoded and resized once; only the random crop and grayscale run each epoch
        data = load_splits(args.data_dir, args.norm, args.cache_dir, args.strict, args.workers)
        train_batches = training_batches(data, args.batch_size, device, args.seed, args.pipeline)  # or the course's
        valid_batches = eval_batches(data, "valid", device)
        num_classes = len(data["classes"])

        # 2. Model: --model, initialised by --init; with --finetune, another model's weights wherever they fit
        model = MODELS[args.model](classes=num_classes).initialize_weights(args.init).to(device)
        if args.finetune and not run.checkpoint:
            run.say_finetune(*load_matching(model, args.finetune))
        freeze_for_epoch(model, args.freeze, args.freeze_epochs, epoch=1)  # --freeze: checked now, set each epoch

        # 3. Loss: cross-entropy, with --label-smoothing and --class-weights
        weight = class_weights(args.class_weights, data["train"].targets, data["classes"])
        criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=args.label_smoothing).to(device)

        # 4. Optimizer and learning-rate schedule (and, with --swa-start, weight averaging: its own valid figures)
        groups = parameter_groups(model, args.lr, args.head_lr_mult)  # --head-lr-mult: the last layer's own lr
        optimizer = build_optimizer(args.optimizer, groups, args.momentum, args.weight_decay, args.nesterov)
        scheduler = build_scheduler(args.scheduler, optimizer, args.epochs, args.step_size, args.gamma)
        swa = WeightAveraging(model, optimizer, args.swa_start, args.swa_lr or args.lr)

        # 5. Train: each epoch trains, evaluates, judges, steps the schedule, logs and saves a checkpoint
        example = data["valid"][0][0][None].to(device)  # one image: the graph, first pictures, forward order
        run.start(model, example, data, device, train_batches.held())  # the run folder, TensorBoard, the start
        monitor = TrainingMonitor(model, run.writer, args.log_interval, enabled=run.is_main and not args.no_monitor,
                                  classes=data["classes"], optimizer=optimizer, frozen=args.freeze or [])
        monitor.start(example, not run.checkpoint, split_tensors(data))  # forward order, weights at step 0, data checks
        state = TrainState()                            # epochs and steps done, the best epoch, the history
        checkpointer = Checkpointer(run, train_batches.generator, data, model=model, optimizer=optimizer,
                                    scheduler=scheduler, swa=swa, monitor=monitor, state=state)
        checkpointer.restore(run.checkpoint)  # resuming: every state as saved, the random states last
        with stop_on_signals() as stop, monitor:  # the monitor's hooks go when training ends
            for epoch in range(state.epoch + 1, args.epochs + 1):
                freeze_for_epoch(model, args.freeze, args.freeze_epochs, epoch)  # the course's finetuning
                train_model = wrap(model, device)  # under torchrun: DistributedDataParallel (of what trains now)
                train = train_one_epoch(train_model, train_batches, criterion, optimizer, device, state, monitor, stop)
                if train["diverged"]:
                    run.stop_diverged(*monitor.nonfinite, state.best)
                if not train["complete"]:  # a signal, on this rank or another: save where we are, exactly
                    checkpointer.save()
                    run.stop_signalled(stop, state)
                with activation_stats(model, monitor.enabled, DIAGNOSED, moments=False) as acts:  # dead, saturated
                    valid = evaluate(model, valid_batches, criterion, device, num_classes)
                verdict = monitor.end_epoch(state.global_step, train["loss"], acts.result(), train_acc=train["acc"],
                                            valid=valid)  # gradient norms, histograms, the verdict
                if not math.isfinite(valid["loss"]):  # a finite train loss, but weights thrown too far
                    run.stop_diverged(state.global_step, f"non-finite valid loss after step {state.global_step}", state.best)
                averaged = swa.update(model, valid_batches, criterion, device, num_classes) if swa.takes_over(epoch) else None
                lrs = step_scheduler(swa.scheduler if averaged else scheduler, valid["loss"])
                is_best = state.end_epoch(valid, averaged, verdict)
                run.log_epoch(state, lrs, verdict)
                checkpointer.save(best=is_best)
            return finish(run, model, checkpointer, swa, data, state, device, stop)


def finish(run, model, checkpointer, swa, data, state, device, stop) -> dict:
    """The best checkpoint, tested and explained (accuracy, confusion matrix, Grad-CAM, feature maps,
    kernels), the averaged model tested beside it, and the results written."""
    run.say(check_weights_agree(model))  # under torchrun: every rank ended with the same weights
    split = "test" if data["test"] else "valid"
    averaged = None
    if swa.model is not None:  # batch-norm statistics for the averaged weights, then its own test
        swa.finish(eval_batches(data, "train", device), device)
        averaged = report(swa.model, data, split, device)
    checkpointer.load_best()
    tested = report(model, data, split, device, run.pictures_dir, run.writer, state.global_step,
                    f"{split}, best epoch {state.best['epoch']}")
    return run.finish(state, tested, averaged, stop)  # a signal now waits until the results are written


if __name__ == "__main__":
    run_script(main, get_args_parser())
