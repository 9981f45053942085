"""How well ``mimir calibrate`` repairs a module whose intervals are wrong, on synthetic labelled predictions.

A copy of ``phantom-demo`` is installed (in a temporary ``MIMIR_HOME``) with
every calibration factor multiplied by ``--factor`` values (4: intervals twice too
wide; 0.25: half as wide as they should be). For ``--n`` subjects per target a
reference value is drawn, the prediction errs by a Gaussian of a known,
subject-specific sd, and the prediction states a variance ``factor`` times the
true one, as the wrong module would. ``mimir calibrate`` then refits the module
by each objective; the figures printed are its cross-fitted ones (every
subject's "after" interval comes from a fit on the other folds), averaged over
the six targets: coverage of the 95 % interval and AUCE (10 levels) before and
after, and the fitted scale (ideal: 1 / factor)::

    python benchmarks/calibrate_repair.py                 # n = 2000, factors 4 and 0.25
    python benchmarks/calibrate_repair.py --n 500 --factor 4
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="labelled subjects")
    ap.add_argument("--factor", type=float, action="append", help="wrong factor(s) (default 4 and 0.25)")
    ap.add_argument("--objectives", default="auce,ci95,nll,anneal")
    args = ap.parse_args(argv)
    factors = args.factor or [4.0, 0.25]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIMIR_HOME"] = str(Path(tmp) / "home")
        from analysis.test_calibrate import gaussian_predictions, wrong_module  # the tests' own generator

        from mimir.analysis.calibrate import calibrate_module

        print(f"# mimir calibrate repair, n={args.n} labelled subjects per target, 5-fold cross-fitted "
              f"({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs)")
        print(f"{'factor':>6} {'objective':>9} {'scale':>7} {'cov95 before':>12} {'cov95 after':>11} "
              f"{'worst after':>11} {'AUCE before':>11} {'AUCE after':>10} {'s':>5}")
        for k, factor in enumerate(factors):
            name = f"phantom-wrong-{k}"
            wrong = wrong_module(Path(tmp) / "src", name, factor)
            text, truth = gaussian_predictions(wrong, args.n, stated=factor, seed=k)
            (Path(tmp) / "p.csv").write_text(text)
            truth.to_csv(Path(tmp) / "r.csv", index=False)
            for objective in args.objectives.split(","):
                t0 = time.perf_counter()
                res = calibrate_module(name, Path(tmp) / "p.csv", Path(tmp) / "r.csv", f"{name}-{objective}",
                                       objective=objective, install=False)
                dt = time.perf_counter() - t0
                reps = [r for r in res.targets if r.fit is not None]
                b = np.mean([r.before["coverage_95"] for r in reps])
                a = [r.after["coverage_95"] for r in reps]
                worst = max(a, key=lambda x: abs(x - 0.95))
                print(f"{factor:>6g} {objective:>9} {np.mean([r.fit.scale for r in reps]):>7.3f} {b:>12.3f} "
                      f"{np.mean(a):>11.3f} {worst:>11.3f} {np.mean([r.before['auce'] for r in reps]):>11.3f} "
                      f"{np.mean([r.after['auce'] for r in reps]):>10.3f} {dt:>5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
