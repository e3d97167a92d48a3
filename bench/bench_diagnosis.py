"""How good the verdict is: every scenario of the labelled suite (tools/scenarios.py), run and judged.

    python bench/bench_diagnosis.py                    # the generated set, and the real photos when present
    python bench/bench_diagnosis.py --data-dir DIR     # another image folder for the healthy real-data runs

Prints a table (scenario, expected finding, the verdict's first finding in the epoch the evidence appears
and at the end, the first epoch the expected finding was named first, the epoch its evidence appears,
seconds) and the totals:
  detection recall    broken runs whose expected finding is named (first or not) in some epoch;
  root-cause accuracy broken runs whose expected finding is named first, in the epoch its evidence appears;
  false alarms        healthy runs with any problem named in any epoch.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.rmb_dataset import default_data_dir, load_splits  # noqa: E402
from tools.scenarios import SCENARIOS, false_alarm, found, run_scenario  # noqa: E402

REAL_DATA = ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data"
REAL_HEALTHY = ("healthy", "healthy-adam", "healthy-seed1")  # also run on the real photos when present


def judge_run(scenario, data, device, label: str) -> dict:
    """One scenario: its row of the table."""
    result = run_scenario(scenario, data, device)
    verdicts = result["verdicts"]
    at = verdicts[min(scenario.evidence_epoch, len(verdicts)) - 1]
    named = any(scenario.expected in [f.name for f in v.findings] for v in verdicts)
    return {"scenario": label, "expected": scenario.expected, "at_evidence": at.status, "final": verdicts[-1].status,
            "detected": result["detected"], "evidence": scenario.evidence_epoch, "seconds": result["seconds"],
            "healthy": scenario.expected == "healthy", "named": named,
            "root_cause": found(at, scenario.expected) and result["detected"] == scenario.evidence_epoch,
            "false_alarm": scenario.expected == "healthy" and false_alarm(verdicts)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REAL_DATA, help="real photos for the healthy runs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    generated = load_splits(default_data_dir(ROOT / "data")[0])
    runs = [(s, generated, s.name) for s in SCENARIOS]
    if args.data_dir.is_dir():
        real = load_splits(args.data_dir)
        runs += [(s, real, f"{s.name} (real photos)") for s in SCENARIOS if s.name in REAL_HEALTHY]
    else:
        print(f"no real photos at {args.data_dir}: the healthy runs use the generated set only")
    rows = [judge_run(scenario, data, device, label) for scenario, data, label in runs]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; generated set "
          f"({len(generated['train'])} train, {len(generated['valid'])} valid)")
    print(f"{'scenario':<30} {'expected':<22} {'first finding at evidence':<26} {'final':<22} {'named first':>11} "
          f"{'evidence':>8} {'seconds':>7}")
    for r in rows:
        first = f"epoch {r['detected']}" if r["detected"] else "never"
        print(f"{r['scenario']:<30} {r['expected']:<22} {r['at_evidence']:<26} {r['final']:<22} {first:>11} "
              f"{'epoch ' + str(r['evidence']):>8} {r['seconds']:7.2f}")
    broken = [r for r in rows if not r["healthy"]]
    healthy = [r for r in rows if r["healthy"]]
    print(f"detection recall {sum(r['named'] for r in broken)}/{len(broken)}; "
          f"root-cause accuracy (named first, in the epoch its evidence appears) "
          f"{sum(r['root_cause'] for r in broken)}/{len(broken)}; "
          f"false alarms {sum(r['false_alarm'] for r in healthy)}/{len(healthy)} healthy runs; "
          f"{time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    main()
