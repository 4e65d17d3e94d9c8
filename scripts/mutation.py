"""Mutation testing of the formula modules with mutmut (https://github.com/boxed/mutmut).

Each module is mutated on its own, in a scratch copy of the project (never in the working
tree), against the few test files that protect it, so one run stays small::

    python scripts/mutation.py                      # every module below
    python scripts/mutation.py analysis/rank.py     # one module (path under lightning_fv/)
    python scripts/mutation.py --list               # the modules and their tests

The configuration mutmut needs (``[tool.mutmut]``) is written into the scratch copy's
``pyproject.toml``; the repository's own ``pyproject.toml`` is not touched. Results (killed
/ total and the surviving mutants, as diffs) are printed and written to
``<workdir>/<module>/report.txt``. Needs ``pip install mutmut==3.8.1`` in the venv.
Set ``OMP_NUM_THREADS=1`` on shared machines; ``--jobs`` sets mutmut's ``--max-children``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module (under lightning_fv/) -> the test files (or node ids) that protect it; each set
# runs in seconds, so mutmut's per-mutant test runs stay cheap
MODULES: dict[str, list[str]] = {
    "analysis/rank.py": ["tests/analysis/test_rank.py"],
    "analysis/similarity.py": ["tests/analysis/test_similarity.py"],
    "analysis/path_linearity.py": ["tests/analysis/test_path_linearity.py"],
    "optvis/projected.py": ["tests/optvis/test_objectives_projected.py"],
    "manipulation/fooling.py": ["tests/manipulation/test_fooling.py"],
    "manipulation/silent.py": ["tests/manipulation/test_silent.py"],
    "ifv/gradifv.py": ["tests/ifv/test_gradifv.py", "tests/ifv/test_gradifv_exact.py"],
    "ifv/critical.py": ["tests/ifv/test_critical_hoyer_eval.py",
                         "tests/ifv/test_critical_exact.py"],
    "diffusion/lowpass.py": ["tests/invariant/test_lowpass.py",
                             "tests/invariant/test_public_lowpass.py"],
    "diffusion/invariant.py": ["tests/invariant/test_invariant.py"],
    "diffusion/sampler.py": ["tests/diffusion/test_sampler.py",
                             "tests/diffusion/test_public_guidance.py"],
}

# mutate only the loss of diffusion/invariant.py (its optimizer loop is tested end to end)
ONLY_FUNCTIONS: dict[str, list[str]] = {
    "diffusion/invariant.py": ["invariant_loss", "InvariantObjective"],
}


# lines whose statements are not mutated (mutmut expands a match to the whole statement)
SKIP_PATTERNS = [r"^\s*raise \w+(Error|Exception|Warning)\(", r"^\s*warnings\.warn\("]


def _copy_project(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "outputs", "mutants")
    shutil.copytree(ROOT / "lightning_fv", dst / "lightning_fv", ignore=ignore)
    shutil.copytree(ROOT / "tests", dst / "tests", ignore=ignore)


def _write_config(dst: Path, module: str, tests: list[str]) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    quoted = ", ".join(json.dumps(t) for t in tests)
    text += (
        "\n[tool.mutmut]\n"
        'source_paths = ["lightning_fv"]\n'
        f'only_mutate = ["lightning_fv/{module}"]\n'
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "--timeout=60"]\n'
        # error messages and warnings are not formulas: skip the statements that raise/warn
        f"do_not_mutate_patterns = {json.dumps(SKIP_PATTERNS)}\n"
    )
    (dst / "pyproject.toml").write_text(text)


def _results(work: Path) -> dict[str, str]:
    """mutant name -> status, from ``mutmut results --all true``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=work, capture_output=True, text=True, check=True).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line and line.strip().startswith("lightning_fv"):
            name, _, st = line.strip().rpartition(":")
            status[name.strip()] = st.strip()
    return status


def _wanted(name: str, module: str) -> bool:
    funcs = ONLY_FUNCTIONS.get(module)
    return funcs is None or any(f"x_{f}__mutmut_" in name or f"ǁ{f}ǁ" in name for f in funcs)


def run_module(module: str, workdir: Path, jobs: int) -> dict[str, object]:
    tests = MODULES[module]
    work = workdir / module.replace("/", "_").removesuffix(".py")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _copy_project(work)
    _write_config(work, module, tests)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH="")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
                   cwd=work, env=env, check=False)
    seconds = time.time() - t0
    status = {k: v for k, v in _results(work).items() if _wanted(k, module)}
    killed = sorted(k for k, v in status.items() if v == "killed")
    survived = sorted(k for k, v in status.items() if v in ("survived", "timeout", "suspicious",
                                                             "no tests"))
    lines = [f"module: lightning_fv/{module}", f"tests: {' '.join(tests)}",
             f"killed {len(killed)} / {len(status)} in {seconds:.0f} s", ""]
    for name in survived:
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work,
                              capture_output=True, text=True).stdout
        lines += [f"--- {name} ({status[name]})", diff]
    report = "\n".join(lines)
    (work / "report.txt").write_text(report)
    print(report, flush=True)
    return {"module": module, "killed": len(killed), "total": len(status),
            "survived": survived, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="paths under lightning_fv/ (default: all)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "lightning_fv_mutation")
    ap.add_argument("--jobs", type=int, default=1, help="mutmut --max-children")
    ap.add_argument("--list", action="store_true", help="print the modules and their tests")
    args = ap.parse_args(argv)
    if args.list:
        for m, t in MODULES.items():
            print(f"{m}: {' '.join(t)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; valid: {sorted(MODULES)}")
    summary = [run_module(m, args.workdir, args.jobs) for m in (args.modules or list(MODULES))]
    print("\nmodule | killed / total | seconds")
    for s in summary:
        print(f"{s['module']} | {s['killed']} / {s['total']} | {s['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
