"""Train LeNet to tell 1-yuan from 100-yuan banknotes, and watch it learn in TensorBoard.

    python train_rmb.py                                    # generated data (or data/RMB_data), 10 epochs
    python train_rmb.py --data-dir data/RMB_data --epochs 20 --device cuda
    python train_rmb.py --resume auto                      # continue the latest run of this --run-name
    tensorboard --logdir runs                              # curves, histograms, graph, diagnosis

Each run writes runs/<YYYYmmdd-HHMMSS>_<run-name>/: TensorBoard events, metrics.json, loss_curve.png,
checkpoint_last.pt and checkpoint_best.pt.
"""
import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from model import INIT_SCHEMES, LeNet
from tools.checkpoint import (
    find_resume_checkpoint,
    load_checkpoint,
    load_model_state,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from tools.cli import (
    REPO_ROOT,
    ArgumentParser,
    add_common_args,
    add_data_args,
    check_writable,
    new_run_dir,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resume_command,
    run,
    seed_everything,
)
from tools.distributed import (
    Distributed,
    ShardSampler,
    all_reduce_sum,
    barrier,
    broadcast,
    distributed,
    gather,
    main_process_first,
    weights_agree,
)
from tools.engine import evaluate, train_one_epoch
from tools.interrupt import EXIT_CODES, stop_on_signals
from tools.lr_schedules import SCHEDULERS, build_scheduler
from tools.monitor import TrainingMonitor, activation_stats
from tools.rmb_dataset import default_data_dir, load_splits
from tools.visualize import (
    explain,
    log_pictures,
    precision_recall,
    render_confusion_matrix,
    save_png,
    snapshot,
    write_explanation,
)

EXIT_DIVERGED = 3
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "global_step", "batches_in_epoch", "epoch_sums",
                   "best", "history", "rng", "epoch_rng", "first_total_norm")
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
    return add_common_args(add_data_args(parser), run_name="lenet")


def adopt_checkpoint_flags(args, saved: dict, say=print) -> None:
    """A resumed run goes on with the flags it was started with (RESUMED_FLAGS); say which differ."""
    for flag in RESUMED_FLAGS:
        now = str(getattr(args, flag)) if getattr(args, flag) is not None else None
        if flag in saved and now != (str(saved[flag]) if saved[flag] is not None else None):
            say(f"resuming: using the run's --{flag.replace('_', '-')} {saved[flag]} (not {now})")
            value = saved[flag]
            setattr(args, flag, Path(value) if flag == "data_dir" and value is not None else value)


def stop_diverged(step: int, detail: str, run_dir: Path, writer, say=print) -> None:
    """Say where training diverged and that the last checkpoint is still good; exit with EXIT_DIVERGED."""
    last = run_dir / "checkpoint_last.pt"
    kept = f"the last good checkpoint, {last}, is kept" if last.exists() else "no checkpoint was saved yet"
    say(f"stopped: {detail}. Nothing from this point on is saved; {kept}. Try a lower --lr.", file=sys.stderr)
    writer.add_text("diagnosis", f"diverged: {detail}", step)
    raise SystemExit(EXIT_DIVERGED)


def main(args) -> dict:
    """Train, validate every epoch, test the best checkpoint; on one process or, under torchrun, on many."""
    with distributed(args.device) as (dist_info, device):
        return train_and_evaluate(args, dist_info, device)


def train_and_evaluate(args, dist_info: Distributed, device: torch.device) -> dict:
    is_main = dist_info.is_main
    say = print if is_main else (lambda *a, **k: None)  # only rank 0 talks and writes files
    # Everything a user can get wrong is checked before any training, and before a run folder exists.
    if is_main:
        check_writable(args.logdir)
    checkpoint, run_dir = None, None
    if args.resume and is_main:
        checkpoint_path = find_resume_checkpoint(args.resume, args.logdir, args.run_name)
        if checkpoint_path is None:
            say(f"--resume auto: no run named {args.run_name} in {args.logdir} yet; starting a new one")
        else:
            checkpoint, run_dir = load_checkpoint(checkpoint_path, CHECKPOINT_KEYS), checkpoint_path.parent
    checkpoint, run_dir = broadcast((checkpoint, run_dir), dist_info)  # every rank resumes rank 0's checkpoint
    if checkpoint:
        adopt_checkpoint_flags(args, checkpoint["args"], say)
    seed_everything(args.seed + dist_info.rank)  # the same init on every rank (DDP copies rank 0's), own augmentation

    # Data: every image decoded and resized once; only the random crop and grayscale run per epoch.
    data_dir = args.data_dir
    if data_dir is None:
        with main_process_first(dist_info):  # rank 0 generates the default set, the others then read it
            data_dir, note = default_data_dir(REPO_ROOT / "data")
        if note:
            say(note)
    data = load_splits(data_dir, args.norm, args.cache_dir or None, args.strict)
    if data["skipped"]:
        say(f"warning: skipped {len(data['skipped'])} unreadable or unsupported file(s): "
            + ", ".join(data["skipped"][:10]) + (" ..." if len(data["skipped"]) > 10 else ""), file=sys.stderr)
    classes = data["classes"]
    loader_generator = torch.Generator().manual_seed(args.seed)
    if dist_info.enabled:  # each rank trains on its own part of every epoch and evaluates its own shard
        train_sampler = DistributedSampler(data["train"], dist_info.world_size, dist_info.rank, seed=args.seed)
        eval_sampler = {name: ShardSampler(len(data[name]), dist_info.rank, dist_info.world_size)
                        for name in ("valid", "test") if data[name] is not None}
    else:
        train_sampler, eval_sampler = None, {}
    train_loader = DataLoader(data["train"], batch_size=args.batch_size, shuffle=train_sampler is None,
                              sampler=train_sampler, generator=loader_generator, num_workers=args.workers,
                              persistent_workers=args.workers > 0)
    eval_loaders = {name: DataLoader(data[name], batch_size=256, sampler=eval_sampler.get(name))
                    for name in ("valid", "test") if data[name] is not None}

    raw_model = LeNet(classes=len(classes)).initialize_weights(args.init).to(device)
    model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else raw_model
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = build_scheduler(args.scheduler, optimizer, args.epochs, args.step_size, args.gamma)

    start_epoch, global_step, skip_batches, best = 0, 0, 0, {"acc": -1.0, "loss": float("inf"), "epoch": 0}
    history = {"train": [], "valid": []}
    if checkpoint:
        load_model_state(raw_model, checkpoint["model"], run_dir)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        skip_batches, best, history = checkpoint["batches_in_epoch"], checkpoint["best"], checkpoint["history"]
    if is_main and not checkpoint:
        run_dir = new_run_dir(args.logdir, args.run_name)
    run_dir = broadcast(run_dir, dist_info)
    if checkpoint:
        say(f"resuming {run_dir} at epoch {start_epoch + 1}, step {global_step}")

    from tools.tb_logging import NullWriter, log_args, log_hparams, log_layout, open_writer  # imported when needed

    writer = open_writer(run_dir, purge_step=global_step + 1 if checkpoint else None) if is_main else NullWriter()
    # Gradients are the same on every rank after DDP's all-reduce: rank 0's monitor speaks for all.
    monitor = TrainingMonitor(raw_model, writer, args.log_interval, enabled=is_main and not args.no_monitor,
                              classes=len(classes))
    if checkpoint:
        monitor.first_total_norm = checkpoint["first_total_norm"]
    example = data["valid"][0][0][None].to(device)
    monitor.set_forward_order(example)
    if is_main and not checkpoint:
        log_args(writer, vars(args) | {"data_dir": data_dir, "classes": classes, "device": device,
                                       "world_size": dist_info.world_size})
        log_layout(writer)
        with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns it is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            writer.add_graph(raw_model, example)
        if args.norm == "data":
            writer.add_text("normalize", f"train split mean {data['mean']}, std {data['std']}", 0)
        log_pictures(writer, snapshot(raw_model, example[0], data["mean"], data["std"]), 0)  # kernels at the start
    if args.norm == "data":
        say(f"Normalize with the train split's mean {[round(m, 4) for m in data['mean']]} "
            f"and std {[round(s, 4) for s in data['std']]}")
    say(f"{len(data['train'])} train, {len(data['valid'])} valid, {len(data['test']) if data['test'] else 0} test "
        f"images of {classes}; device {device}"
        + (f" x {dist_info.world_size} processes" if dist_info.enabled else "") + f"; run {run_dir}")

    def checkpoint_state(epoch, batches_in_epoch=0, epoch_rng=None, epoch_sums=None):
        """Everything a resumed run needs to go on exactly; mid-epoch (after a signal) also where the
        epoch began (its RNG states) and its running sums. Under torchrun, RNG states are per rank."""
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "global_step": global_step,
                "batches_in_epoch": batches_in_epoch, "epoch_sums": epoch_sums, "best": best, "history": history,
                "rng": per_rank(rng_states(loader_generator)), "epoch_rng": epoch_rng, "classes": classes,
                "first_total_norm": monitor.first_total_norm, "world_size": dist_info.world_size,
                "norm": {"mean": data["mean"], "std": data["std"]},
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    def per_rank(states):  # a collective: every rank calls it at the same point
        return gather(states, dist_info) if dist_info.enabled else states

    def own(states):
        return states[dist_info.rank] if isinstance(states, list) else states

    def save(state, *names):
        if is_main:
            for name in names:
                save_checkpoint(state, run_dir / name)

    from tqdm import tqdm

    reduce = (lambda values: all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()) \
        if dist_info.enabled else None
    if checkpoint and checkpoint.get("world_size", 1) != dist_info.world_size:
        say(f"note: the run was saved on {checkpoint.get('world_size', 1)} process(es) and goes on with "
            f"{dist_info.world_size}: it continues, but not bit for bit")
        checkpoint["rng"] = checkpoint["epoch_rng"] = None
    elif checkpoint:  # last, so that nothing above (even creating a DataLoader iterator) draws from them
        restore_rng_states(own(checkpoint["epoch_rng"] if skip_batches else checkpoint["rng"]), loader_generator)
    started = time.perf_counter()
    train_stats = valid_stats = None
    try:
        with stop_on_signals() as stop:
            for epoch in range(start_epoch, args.epochs):
                epoch_started = time.perf_counter()
                if train_sampler is not None:
                    train_sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
                mid_epoch = checkpoint if skip_batches else None  # resuming an interrupted epoch
                epoch_rng = mid_epoch["epoch_rng"] if mid_epoch else per_rank(rng_states(loader_generator))
                with tqdm(total=len(train_loader), initial=skip_batches, desc=f"epoch {epoch + 1}/{args.epochs}",
                          leave=False, disable=None if is_main else True) as bar:
                    train_stats = train_one_epoch(
                        model, train_loader, criterion, optimizer, device, monitor, writer, global_step,
                        skip_batches=skip_batches,
                        resume_rng=own(mid_epoch["rng"]) if mid_epoch else None,
                        resume_sums=mid_epoch["epoch_sums"] if mid_epoch else None,
                        should_stop=lambda: stop.requested, progress=bar, reduce=reduce)
                global_step = train_stats["global_step"]
                history["train"] += train_stats["losses"]
                if train_stats["diverged"]:
                    stop_diverged(*monitor.nonfinite, run_dir, writer, say)
                if not train_stats["complete"]:  # a signal, on this rank or another: save where we are, exactly
                    save(checkpoint_state(epoch, train_stats["batches"], epoch_rng, train_stats["sums"]),
                         "checkpoint_last.pt")
                    say(f"\n{stop.name or 'signal'}: saved {run_dir / 'checkpoint_last.pt'} at epoch {epoch + 1}, "
                        f"step {global_step}. Resume with:\n  {resume_command(run_dir)}", file=sys.stderr)
                    barrier(dist_info)  # no rank leaves before the checkpoint is on disk
                    raise SystemExit(stop.exit_code if stop.requested else EXIT_CODES[signal.SIGTERM])
                skip_batches = 0

                with activation_stats(raw_model, monitor.enabled, (nn.ReLU,), moments=False) as acts:  # dead units
                    valid_stats = evaluate(raw_model, eval_loaders["valid"], criterion, device, len(classes))
                # histograms and verdict first, while TensorBoard's writer thread has nothing else to do
                verdict = monitor.end_epoch(global_step, train_stats["loss"], acts.result())
                if not math.isfinite(valid_stats["loss"]):  # a finite train loss, but weights thrown too far
                    stop_diverged(global_step, f"non-finite valid loss after step {global_step}", run_dir, writer, say)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step(valid_stats["loss"]) if args.scheduler == "plateau" else scheduler.step()
                history["valid"].append((global_step, valid_stats["loss"]))
                writer.add_scalar("loss/valid", valid_stats["loss"], global_step)
                writer.add_scalar("acc/valid", valid_stats["acc"], global_step)
                writer.add_scalar("lr", lr, global_step)
                if is_main:
                    confusion = render_confusion_matrix(valid_stats["confusion"], classes, f"valid, epoch {epoch + 1}",
                                                        cell=48)  # small: TensorBoard's PNG encoding costs per pixel
                    writer.add_image("confusion/valid", np.asarray(confusion), global_step, dataformats="HWC")
                if (valid_stats["acc"], -valid_stats["loss"]) > (best["acc"], -best["loss"]):  # ties: lower loss
                    best = {"acc": valid_stats["acc"], "loss": valid_stats["loss"], "epoch": epoch + 1}
                writer.flush()  # the epoch's events are on disk before the checkpoint that covers them
                state = checkpoint_state(epoch + 1)
                save(state, "checkpoint_last.pt", *(["checkpoint_best.pt"] if best["epoch"] == epoch + 1 else []))
                say(f"epoch {epoch + 1:>3}/{args.epochs}  train loss {train_stats['loss']:.4f} "
                    f"acc {train_stats['acc']:6.2%}  valid loss {valid_stats['loss']:.4f} "
                    f"acc {valid_stats['acc']:6.2%}  lr {lr:.2g}  {time.perf_counter() - epoch_started:.3f} s"
                    + (f"\n    diagnosis: {verdict}" if verdict else ""))

        if not weights_agree(raw_model, dist_info):
            raise RuntimeError("the ranks ended with different weights: DistributedDataParallel lost step")
        if dist_info.enabled:
            say(f"weights identical on all {dist_info.world_size} processes")
        # The best checkpoint, explained: test accuracy and confusion matrix, Grad-CAM, feature maps, kernels.
        test_acc = None
        per_class = {"valid": precision_recall(valid_stats["confusion"], classes) if valid_stats else None}
        if best["epoch"]:
            best_weights = load_checkpoint(run_dir / "checkpoint_best.pt")["model"] if is_main else None
            load_model_state(raw_model, broadcast(best_weights, dist_info), run_dir)
        if "test" in eval_loaders and best["epoch"]:
            test_stats = evaluate(raw_model, eval_loaders["test"], criterion, device, len(classes))
            test_acc, per_class["test"] = test_stats["acc"], precision_recall(test_stats["confusion"], classes)
            if is_main:
                confusion = render_confusion_matrix(test_stats["confusion"], classes,
                                                    f"test, best epoch {best['epoch']}")
                save_png(confusion, run_dir / "confusion_test.png")
                writer.add_image("confusion/test", np.asarray(confusion), global_step, dataformats="HWC")
        if best["epoch"] and is_main:
            write_explanation(explain(raw_model, data["test"] or data["valid"], classes, data["mean"], data["std"]),
                              run_dir, writer, global_step)
        metrics = {"train_loss": train_stats["loss"] if train_stats else None,
                   "train_acc": train_stats["acc"] if train_stats else None,
                   "valid_loss": valid_stats["loss"] if valid_stats else None,
                   "valid_acc": valid_stats["acc"] if valid_stats else None,
                   "best_valid_acc": best["acc"], "test_acc": test_acc, "best_epoch": best["epoch"],
                   "epochs": args.epochs, "seconds": round(time.perf_counter() - started, 3), "per_class": per_class}
        if is_main:
            log_hparams(writer, {k: v for k, v in vars(args).items() if k in HPARAMS}, metrics, global_step)
    finally:
        writer.close()

    if is_main:
        from tools.plots import plot_loss_curve

        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_loss_curve(history["train"], history["valid"], run_dir / "loss_curve.png")
    if test_acc is not None:
        say(f"test accuracy {test_acc:.2%} (best epoch {best['epoch']}, valid {best['acc']:.2%})")
    say(f"results in {run_dir}\nsee them with: tensorboard --logdir {run_dir}")
    return metrics | {"run_dir": str(run_dir)}


if __name__ == "__main__":
    run(main, get_args_parser())
