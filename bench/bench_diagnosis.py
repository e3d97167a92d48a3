"""How good the verdict is: every run of both labelled suites, run and judged: LeNet on the RMB data
(tools/suites/scenarios.py) and users' own loops on four model families (tools/suites/user_loops.py).

    python bench/bench_diagnosis.py                    # the generated set, and the real photos when present
    python bench/bench_diagnosis.py --data-dir DIR     # another image folder for the healthy real-data runs
    python bench/bench_diagnosis.py --only families    # the users' loops only (about 30 s)

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

from tools.data.image_folder import default_data_dir, load_splits
from tools.suites.scenarios import SCENARIOS, false_alarm, found, run_scenario  # noqa: E402
from tools.suites.user_loops import USER_RUNS, run_user_loop  # noqa: E402

REAL_DATA = ROOT.parent / "shared" / "data" / "rmb_real" / "RMB_data"
REAL_HEALTHY = ("healthy", "healthy-adam", "healthy-seed1")  # also run on the real photos when present


def judge_run(scenario, data, device, label: str, family: str = "lenet") -> dict:
    """One scenario (data None: a run of the users' loops): its row of the table."""
    result = run_scenario(scenario, data, device) if data is not None else run_user_loop(scenario, device)
    verdicts = result["verdicts"]
    at = verdicts[min(scenario.evidence_epoch, len(verdicts)) - 1]
    named = any(scenario.expected in [f.name for f in v.findings] for v in verdicts)
    return {"scenario": label, "expected": scenario.expected, "at_evidence": at.status, "final": verdicts[-1].status,
            "detected": result["detected"], "evidence": scenario.evidence_epoch, "seconds": result["seconds"],
            "healthy": scenario.expected == "healthy", "named": named, "family": family,
            "root_cause": found(at, scenario.expected) and result["detected"] == scenario.evidence_epoch,
            "false_alarm": scenario.expected == "healthy" and false_alarm(verdicts)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REAL_DATA, help="real photos for the healthy runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("lenet", "families"), help="one suite only")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    runs = []
    if args.only != "families":
        generated = load_splits(default_data_dir(ROOT / "data")[0])
        runs += [(s, generated, s.name, "lenet") for s in SCENARIOS]
        if args.data_dir.is_dir():
            real = load_splits(args.data_dir)
            runs += [(s, real, f"{s.name} (real photos)", "lenet") for s in SCENARIOS if s.name in REAL_HEALTHY]
        else:
            print(f"no real photos at {args.data_dir}: the healthy runs use the generated set only")
    if args.only != "lenet":
        runs += [(r, None, r.name, r.family) for r in USER_RUNS]
    rows = [judge_run(scenario, data, device, label, family) for scenario, data, label, family in runs]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")
    print(f"{'scenario':<30} {'family':<12} {'expected':<22} {'first finding at evidence':<26} {'final':<22} "
          f"{'named first':>11} {'evidence':>8} {'seconds':>7}")
    for r in rows:
        first = f"epoch {r['detected']}" if r["detected"] else "never"
        print(f"{r['scenario']:<30} {r['family']:<12} {r['expected']:<22} {r['at_evidence']:<26} {r['final']:<22} "
              f"{first:>11} {'epoch ' + str(r['evidence']):>8} {r['seconds']:7.2f}")
    print(f"\n{'family':<12} {'detected':>9} {'root cause first':>17} {'false alarms':>13}")
    for family in [*dict.fromkeys(r["family"] for r in rows), "total"]:
        mine = [r for r in rows if family in ("total", r["family"])]
        broken, healthy = [r for r in mine if not r["healthy"]], [r for r in mine if r["healthy"]]
        print(f"{family:<12} {sum(r['named'] for r in broken):>4}/{len(broken):<4} "
              f"{sum(r['root_cause'] for r in broken):>11}/{len(broken):<5} "
              f"{sum(r['false_alarm'] for r in healthy):>7}/{len(healthy):<5}")
    broken = [r for r in rows if not r["healthy"]]
    healthy = [r for r in rows if r["healthy"]]
    print(f"detection recall {sum(r['named'] for r in broken)}/{len(broken)}; "
          f"root-cause accuracy (named first, in the epoch its evidence appears) "
          f"{sum(r['root_cause'] for r in broken)}/{len(broken)}; "
          f"false alarms {sum(r['false_alarm'] for r in healthy)}/{len(healthy)} healthy runs; "
          f"{time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    main()
