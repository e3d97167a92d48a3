"""The machinery behind the scripts: data, monitoring, checkpoints, visualisation, command-line helpers.

The modules once at the top of tools/ now live in its wings; an import of an old path (copied from earlier
docs: `from tools.activations import ...`) fails with a line that names the new home."""
import sys
from importlib.abc import MetaPathFinder

MOVED = {  # the old module -> where it lives now
    "tools.errors": "tools.cli.errors",
    "tools.output_folder": "tools.cli.output_folder",
    "tools.data_checks": "tools.data.checks",
    "tools.image_cache": "tools.data.image_cache",
    "tools.activations": "tools.monitor.activations",
    "tools.monitor_arguments": "tools.monitor.arguments",
    "tools.epoch_figures": "tools.monitor.epoch_figures",
    "tools.hooks": "tools.monitor.hooks",
    "tools.loop_checks": "tools.monitor.loop_checks",
    "tools.tensor_stats": "tools.monitor.tensor_stats",
    "tools.verdict": "tools.monitor.verdict",
    "tools.verdict_rules": "tools.monitor.verdict_rules",
    "tools.gradcam": "tools.pictures.gradcam",
    "tools.plots": "tools.pictures.plots",
    "tools.visualize": "tools.pictures.visualize",
    "tools.family_data": "tools.suites.family_data",
    "tools.scenarios": "tools.suites.scenarios",
    "tools.user_loops": "tools.suites.user_loops",
    "tools.event_crc": "tools.tb.event_crc",
    "tools.tb_logging": "tools.tb.writer",
    "tools.batches": "tools.training.batches",
    "tools.checkpoint": "tools.training.checkpoint",
    "tools.distributed": "tools.training.distributed",
    "tools.engine": "tools.training.engine",
    "tools.interrupt": "tools.training.interrupt",
    "tools.optim": "tools.training.optim",
    "tools.report": "tools.training.report",
    "tools.run_folder": "tools.training.run_folder",
    "tools.swa": "tools.training.swa",
    "tools.train_state": "tools.training.train_state",
}


class MovedModules(MetaPathFinder):
    """Asked only after every other finder found nothing: an old path's ModuleNotFoundError says where it went."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            raise ModuleNotFoundError(f"No module named {name!r}: it moved to {MOVED[name]} (docs/code.md maps "
                                      "tools/)", name=name)
        return None


if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(MovedModules())
