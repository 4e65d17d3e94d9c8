"""Every command line of README.md and docs/*.md runs as written.

The lines are collected from the markdown itself (:mod:`_extract`); :data:`COVERAGE` says
how each one is run: as written with arguments appended only to shrink it (the same
command at a reduced size, in a scratch working directory with ``examples/`` and
``scripts/`` linked in), as written under the ``full`` marker (``make test-docs``), or not
at all with the reason (a GPU cluster or a data set that is not on this machine; the bare
name of a command in prose; ``make test`` itself). A documented line missing from
:data:`COVERAGE` fails :func:`test_every_documented_command_is_covered`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _extract import ROOT, documented_commands

FV = "lightning-fv predict --model lightning_fv.modules.FeatureVisualizer"
CPU = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
TINY_RENDER = ["--steps", "2", "--image_size", "32", "--device", "cpu", "--progress", "false"]
TINY_ROBUST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
               "--data.init_args.n_train_per_class", "4", "--data.init_args.n_val_per_class",
               "2", "--model.init_args.steps", "1", "--model.init_args.test_restarts", "1",
               *CPU]

SLOW = "full"  # only as written, by `make test-docs` (marker `full`): too long to shrink
FAST_DEV_RUN = ["--trainer.fast_dev_run", "1", *CPU]
TINY_SAMPLE = ["--num_steps", "2", "--per_label", "1", "--device", "cpu"]
TINY_INVARIANT = ["--samples_per_query", "1", "--algorithm.budget", "1",
                  "--algorithm.num_steps", "2", "--progress", "false", "--device", "cpu"]
TINY_IFV_MINI = ["--n-targets", "2", "--steps", "2", "--lbfgs-steps", "1", "--reopt-steps", "1",
                 "--image-size", "16", "--out", "outputs/ifv_mini"]
TINY_MANIP_MINI = ["--steps", "2", "--size", "16", "--fc-steps", "2", "--epochs", "1",
                   "--silent-steps", "2", "--trajectories", "1", "--digits-steps", "2",
                   "--out", "outputs/manip_mini", "--figures", "outputs/manip_mini_figures"]
TINY_SANITY_MINI = ["--per-class", "1", "--steps", "2", "--n-val", "3", "--ood-digits", "30",
                    "--out", "outputs/sanity_mini"]
#: a `make miniature-*` target is one line running its script, whose computation is run at
#: a reduced size by the script's own entries: the target is run with the script's --help
MAKE_WRAPPER = ["ARGS=--help"]
TINY_DETECTOR = ["--steps", "2", "--epochs", "1", "--n_natural_per_class", "4",
                 "--trajectories_per_unit", "1", "--units", "[fc:0-3]", "--device", "cpu",
                 "--progress", "false"]
PAPER = ("not run: paper scale needs pretrained weights and an ImageNet folder; the same "
         "config runs at tiny size with random weights in tests/paper/test_paper_configs.py")
#: §4 of docs/sanity_check.md trains a wider CNN, then checks it (ORDER keeps the two in turn)
WIDE_TRAIN = ("python scripts/train_bundled.py --dataset photo_patches --widths 64 128 192 256 "
              "--epochs 6 --out-dir outputs/sanity_sweep/wide_cnn")
WIDE_CHECK = ("python scripts/sanity_check_miniature.py --per-class 3 --steps 128 --n-val 30 "
              "--preset lucent --checks spearman,ood_shifted --save-renders --checkpoint "
              "outputs/sanity_sweep/wide_cnn/small_cnn_photo_patches_w64-128-192-256.safetensors "
              "--out outputs/sanity_sweep/wide_steps128_per3")
#: one epoch on 40 patches per class (train_bundled.py, photo patches)
SHORT_TRAIN = ["--epochs", "1", "--n-train-per-class", "40"]
#: a command → extra arguments that only shrink it (run in `make test`), SLOW, or a reason
#: it is not run here (a string starting with "not run:").
COVERAGE: dict[str, list[str] | str] = {
    # README
    "make demo": ["--steps", "2", "--units", "fc:0-1", "--image-size", "32", "--epochs", "1",
                  "--progress", "false", "--trainer.limit_train_batches", "1",
                  "--trainer.limit_val_batches", "1"],
    "make test": "not run: the test suite itself",
    "lightning-fv render --model bundled --units '[block3:*]' --steps 256":
        [*TINY_RENDER, "--units", "[block3:0-1]"],
    "lightning-fv fit --config examples/configs/demo.yaml": FAST_DEV_RUN,
    "lightning-fv fit --config examples/configs/robust_photo_patches.yaml": TINY_ROBUST,
    f"{FV} --model.units '[fc:*]'": ["--model.thresholds", "[2]", "--model.image_size", "32",
                                     "--model.progress", "false", *CPU],
    "lightning-fv render --model bundled --units '[fc:*, block3:0-15]' --steps 256":
        TINY_RENDER,
    "lightning-fv sample --labels '[0,1,2]' --cfg_scale 4": TINY_SAMPLE,
    "lightning-fv invariant --classes '[0,2,4]'": TINY_INVARIANT,
    "lightning-fv ifv --layer block2.bn --n_targets 16":
        ["--n_targets", "2", "--steps", "2", "--lbfgs_steps", "1", "--reopt_steps", "1",
         "--image_size", "16", "--device", "cpu", "--progress", "false"],
    "lightning-fv train-detector --config examples/configs/manipulate_train_detector.yaml":
        TINY_DETECTOR,
    "lightning-fv manipulate --config examples/configs/manipulate_silent.yaml":
        ["--n_natural_per_class", "2", "--image_size", "32", "--pattern_steps", "2"],
    "lightning-fv render-comparison --manipulated_path outputs/manipulation/silent.safetensors":
        ["--units", "[block4:0, fc:0]", "--steps", "2", "--image_size", "32", "--device", "cpu",
         "--progress", "false"],
    "make miniature-sanity": MAKE_WRAPPER,
    "make miniature-manipulation": MAKE_WRAPPER,
    "make miniature-ifv": MAKE_WRAPPER,
    "make miniature-robust": MAKE_WRAPPER,
    "make miniature-invariant": MAKE_WRAPPER,
    "make miniatures": "not run: the five miniature-* targets above, each run on its own",
    "python scripts/train_bundled.py --dataset photo_patches": SHORT_TRAIN,
    "python scripts/train_bundled.py --dataset digits": ["--epochs", "1"],
    "python scripts/train_bundled.py --dataset photo_patches --arch vit": SHORT_TRAIN,
    "make clean": [],
    "make clean-outputs": [],
    "make test-slow": "not run: the slow tests alone (they are part of make test)",
    "make test-all": "not run: make test, make test-docs and make test-browser together",
    "make test-docs": "not run: this file's full-size cases",
    "make test-browser": "not run: installs Chromium, then tests/report/test_report_browser.py",
    "make test-gpu": "not run: needs a CUDA device",
    "make lint": [],
    # docs/diffusion.md
    "lightning-fv fit --config examples/configs/diffusion_digits.yaml": FAST_DEV_RUN,
    "lightning-fv fit --config examples/configs/diffusion_vavae_imagenet.yaml":
        "not run: GPU template that needs ImageNet latents",
    "lightning-fv sample --checkpoint bundled --per_label 8 --cfg_scale 2.0 "
    "--output_dir outputs/sample": TINY_SAMPLE,
    "lightning-fv sample": TINY_SAMPLE,
    # docs/engine.md
    f"{FV} --model.model resnet50 --model.checkpoint_path weights.safetensors "
    "--model.mean '[0.485,0.456,0.406]' --model.std '[0.229,0.224,0.225]' "
    "--model.units '[layer4:*]' --model.image_size 224 --model.bf16 true "
    "--model.output_dir outputs/layer4 --trainer.accelerator gpu --trainer.devices 8 "
    "--trainer.strategy ddp": "not run: an 8-GPU DDP template with the user's weights "
                              "(the 2-process CPU sweep is tests/modules)",
    "lightning-fv render --model resnet50 --checkpoint_path r50.safetensors "
    "--mean '[0.485,0.456,0.406]' --std '[0.229,0.224,0.225]' --image_size 224 "
    "--units '[layer4.1.conv2:0-63]' --bf16 true":
        "not run: needs the user's r50.safetensors (bf16 render: tests/gpu)",
    "lightning-fv render": TINY_RENDER,
    # docs/ifv.md
    "lightning-fv fit --config examples/configs/ifv_fit.yaml": FAST_DEV_RUN,
    "lightning-fv ifv": ["--n_targets", "2", "--steps", "2", "--lbfgs_steps", "1",
                         "--reopt_steps", "1", "--image_size", "16", "--device", "cpu",
                         "--progress", "false"],
    "python scripts/ifv_miniature.py": TINY_IFV_MINI,
    "python scripts/ifv_miniature.py --runs A": TINY_IFV_MINI,
    "python scripts/ifv_miniature.py --threads 1": TINY_IFV_MINI,
    # docs/invariant.md
    "lightning-fv predict --config examples/configs/invariant_digits.yaml":
        ["--model.init_args.samples_per_query", "1", "--model.init_args.algorithm.budget", "1",
         "--model.init_args.algorithm.num_steps", "2", "--trainer.accelerator", "cpu",
         "--trainer.limit_predict_batches", "1"],
    "lightning-fv fit --config examples/configs/invariant_callback.yaml": FAST_DEV_RUN,
    "lightning-fv invariant": TINY_INVARIANT,
    'lightning-fv invariant --classes "[0,3,8]" --samples_per_query 4 --algorithm.budget 128':
        TINY_INVARIANT,
    # reruns the config the README's invariant line saved (tiny in make test, so as written)
    "lightning-fv predict --config outputs/invariant/version_0/config.yaml": [],
    # docs/manipulation.md
    "python scripts/manipulation_miniature.py": TINY_MANIP_MINI,
    "lightning-fv fit --config examples/configs/detector_photo_patches.yaml":
        [*FAST_DEV_RUN, "--data.init_args.max_units_per_layer", "2",
         "--data.init_args.n_natural_per_class", "2", "--data.init_args.steps", "2",
         "--data.init_args.n_log_steps", "2", "--data.init_args.image_size", "32",
         "--model.init_args.image_size", "32"],
    # docs/robust.md
    "lightning-fv test --config examples/configs/robust_photo_patches.yaml "
    "--ckpt_path outputs/robust_photo_patches/checkpoints/last.ckpt": TINY_ROBUST,
    "lightning-fv fit --config examples/configs/robust_resnet50_linf.yaml "
    "--data.init_args.root /data/imagenet": "not run: needs ImageNet at /data/imagenet",
    "python scripts/train_robust.py [--dataset digits|photos]":
        "not run: a synopsis of the two lines run as make miniature-robust and below",
    "python scripts/train_robust.py --dataset photos":
        ["--quick", "--size", "32", "--train-steps", "1", "--out", "outputs/robust_quick"],
    "python benchmarks/bench_pgd.py --device cpu --small":
        ["--steps", "2", "--repeats", "1", "--warmup", "0", "--batch", "2"],
    "python benchmarks/bench_pgd.py [--bf16] [--channels-last]":
        "not run: a synopsis of the GPU benchmark (benchmarks/gpu)",
    # docs/audit.md
    "lightning-fv audit --config examples/configs/audit_photo_patches.yaml":
        ["--steps", "2", "--units_per_layer", "1", "--layers", "[block2, fc]", "--path_images",
         "2", "--path_steps", "2", "--pgd_steps", "1", "--robust_images", "8", "--max_images",
         "40", "--datamodule.init_args.n_val_per_class", "4", "--datamodule.init_args.size",
         "32", "--device", "cpu", "--progress", "false"],
    "lightning-fv audit --config examples/configs/audit_photo_patches.yaml --devices 2 "
    "--device cpu":
        ["--steps", "2", "--units_per_layer", "1", "--layers", "[block2, fc]", "--path_images",
         "2", "--path_steps", "2", "--pgd_steps", "1", "--robust_images", "8", "--max_images",
         "40", "--datamodule.init_args.n_val_per_class", "4", "--datamodule.init_args.size",
         "32", "--progress", "false"],
    "lightning-fv audit --config my_resnet50_audit.yaml --devices 8 --device cuda":
        "not run: needs 8 GPUs and a user's config (the 2-process CPU line above runs the "
        "same code path)",
    # docs/testing.md
    "make mutation": ["ARGS=diffusion/lowpass.py"],
    "python scripts/mutation.py [module …]": "not run: a synopsis of make mutation",
    # docs/sanity_check.md (§4's sweep toward the paper's settings)
    "python scripts/sanity_check_miniature.py --per-class 3 --steps 512 --n-val 30 --preset "
    "lucent --snapshots 32,128 --checks spearman,ood_shifted --out "
    "outputs/sanity_sweep/steps512_per3": TINY_SANITY_MINI,
    "python scripts/sanity_check_miniature.py --per-class 10 --steps 128 --n-val 30 --preset "
    "lucent --checks spearman,ood_shifted --out outputs/sanity_sweep/steps128_per10":
        TINY_SANITY_MINI,
    "python scripts/sanity_check_miniature.py --per-class 10 --steps 512 --n-val 30 --preset "
    "lucent --checks spearman --out outputs/sanity_sweep/steps512_per10": TINY_SANITY_MINI,
    WIDE_TRAIN: SHORT_TRAIN,
    WIDE_CHECK: TINY_SANITY_MINI,
    "lightning-fv fit --config examples/configs/imagefolder_resnet.yaml":
        "not run: a template whose root/classes the user adapts to their image folder",
    "lightning-fv fit|validate|test": "not run: prose naming the LightningCLI subcommands",
    # docs/maco.md
    "python scripts/maco_comparison.py --steps 64": ["--steps", "2"],
    "python scripts/maco_comparison.py --steps 64 --model photo_patches_vit "
    "--figures docs/figures": ["--steps", "2", "--figures", "outputs/maco_figures"],
    # docs/reproducing.md
    "lightning-fv audit --config examples/configs/paper_sanity_resnet50.yaml": PAPER,
    "lightning-fv audit --config examples/configs/paper_sanity_googlenet.yaml": PAPER,
    "lightning-fv fit --config examples/configs/paper_detector_googlenet.yaml": PAPER,
    "lightning-fv manipulate --config examples/configs/paper_fooling_resnet50.yaml": PAPER,
    "lightning-fv manipulate --config examples/configs/paper_silent_resnet50.yaml": PAPER,
    "lightning-fv ifv --config examples/configs/paper_ifv_googlenet.yaml": PAPER,
    "lightning-fv fit --config examples/configs/paper_robust_resnet50_l2.yaml": PAPER,
    "lightning-fv predict --config examples/configs/paper_invariant_dit_xl.yaml": PAPER,
    "python scripts/sanity_check_miniature.py --per-class 3 --steps 128 --n-val 30 "
    "--preset lucent": TINY_SANITY_MINI,
    "python scripts/manipulation_miniature.py --parts photo": TINY_MANIP_MINI,
    "python scripts/manipulation_miniature.py --parts digits": TINY_MANIP_MINI,
    "python scripts/manipulation_miniature.py --parts silent": TINY_MANIP_MINI,
    "python scripts/train_robust.py --dataset digits": ["--quick"],
    "python scripts/invariant_miniature.py": ["--quick", "--out", "outputs/inv_quick.json"],
    "python scripts/invariant_miniature.py --classes 0 2 4 --samples 2 --budget 512 --lr 0.3 "
    "--step-size 1.0 --tau 0.01 --no-sae --out outputs/invariant_thesis_lr03.json "
    "--figures outputs/invariant_thesis_lr03_figures":
        ["--budget", "2", "--classes", "0"],
    "lightning-fv manipulate": "not run: the bare command name in prose",
    "lightning-fv render-comparison": "not run: the bare command name in prose",
}

#: commands that need an earlier one's output, in the order they run
ORDER = [
    WIDE_TRAIN,
    WIDE_CHECK,
    "lightning-fv fit --config examples/configs/robust_photo_patches.yaml",
    "lightning-fv test --config examples/configs/robust_photo_patches.yaml "
    "--ckpt_path outputs/robust_photo_patches/checkpoints/last.ckpt",
    "lightning-fv train-detector --config examples/configs/manipulate_train_detector.yaml",
    "lightning-fv manipulate --config examples/configs/manipulate_silent.yaml",
    "lightning-fv render-comparison --manipulated_path outputs/manipulation/silent.safetensors",
    "lightning-fv predict --config outputs/invariant/version_0/config.yaml",
]


def _argv(command: str, extra: list[str]) -> list[str]:
    """The process to start for a documented line, plus ``extra`` shrinking arguments."""
    words = shlex.split(command)
    if words[0] == "lightning-fv":
        return [sys.executable, "-m", "lightning_fv.cli", *words[1:], *extra]
    if words[0] == "python":
        return [sys.executable, *words[1:], *extra]
    if words[0] == "make" and extra and words[1:] == ["demo"]:
        # `make demo` is `$(PY) -m lightning_fv.demo` after the install (Makefile)
        return [sys.executable, "-m", "lightning_fv.demo", *extra]
    # make's own variables point at this interpreter; with shrinking arguments the target
    # runs in the scratch folder (outputs there) from the repository's Makefile
    where = ["-f", str(ROOT / "Makefile")] if extra else []
    return [words[0], *where, *words[1:], f"PY={sys.executable}",
            f"STAMP={ROOT / '.venv' / '.installed'}", *extra]


def _workdir(tmp: Path) -> Path:
    # pyproject.toml: the Makefile's install stamp depends on it (make targets run here)
    for name in ("examples", "scripts", "benchmarks", "pyproject.toml"):
        (tmp / name).symlink_to(ROOT / name)
    return tmp


class Zygote:
    """``tests/docs/_zygote.py``: one process that has imported torch, Lightning and
    lightning_fv and forks a child per command (a fresh process each, without the ~8 s of
    imports). Lines that start other processes of their own (``--devices``) or are make
    targets still get a process started from scratch."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(
            "_zygote.py"))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env, cwd=ROOT)

    @staticmethod
    def takes(command: str) -> bool:
        words = shlex.split(command)
        return (words[0] in ("lightning-fv", "python") or words[:2] == ["make", "demo"]) \
            and "--devices" not in words

    def run(self, command: str, extra: list[str], cwd: Path, timeout: float) -> str:
        argv = _argv(command, extra)[1:]  # without the interpreter
        if argv[:2] == ["-m", "lightning_fv.cli"]:
            argv = ["lightning-fv", *argv[2:]]
        log = cwd / ".command.log"
        req = {"argv": argv, "cwd": str(cwd), "log": str(log), "timeout": timeout,
               "env": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        out = log.read_text(errors="replace")
        assert rc == 0, f"{command!r} failed (exit status {rc}):\n{out[-6000:]}"
        return out

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _run(command: str, extra: list[str], cwd: Path, timeout: float,
         zygote: Zygote | None = None) -> str:
    if zygote is not None and zygote.takes(command):
        return zygote.run(command, extra, cwd, timeout)
    words = shlex.split(command)
    if words[0] == "make" and words[1] in ("clean", "clean-outputs"):
        return _run_clean(words[1], cwd)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if words[0] == "make" and not extra:
        cwd = ROOT  # targets run as written name repository paths (miniatures, lint)
    proc = subprocess.run(_argv(command, extra), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{command!r} failed:\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _run_clean(target: str, cwd: Path) -> str:
    """`make clean` / `make clean-outputs` on a copy of the Makefile in a scratch folder."""
    (cwd / "Makefile").write_text((ROOT / "Makefile").read_text())
    keep = cwd / "outputs" / "manipulation" / "detector.safetensors"
    scratch = cwd / "outputs" / "cache" / "trajectories" / "x.pt"
    for p in (keep, scratch):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    proc = subprocess.run(["make", "-s", target], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not scratch.exists()
    assert keep.exists() == (target == "clean")
    return proc.stdout


def test_every_documented_command_is_covered() -> None:
    found = documented_commands()
    missing = {c: d for c, d in found.items() if c not in COVERAGE}
    assert not missing, (f"documented commands with no entry in COVERAGE: {missing}; run "
                         f"each at a reduced size, mark it slow, or give the reason")
    stale = sorted(set(COVERAGE) - set(found))
    assert not stale, f"COVERAGE names commands no document shows any more: {stale}"


def _cases(fast: bool) -> list:
    """The reduced runs (``fast``), or every runnable line as written (the full tier)."""
    cases = [c for c, how in COVERAGE.items() if (isinstance(how, list) or not fast)
             and not (isinstance(how, str) and how.startswith("not run:"))]
    last = ("make clean", "make clean-outputs")  # they delete what the others wrote
    return sorted(cases, key=lambda c: (c in last, ORDER.index(c) if c in ORDER else -1))


def test_documented_commands_run_at_a_reduced_size(tmp_path) -> None:
    """All the cheap lines, in one scratch folder (later lines read earlier outputs)."""
    cwd = _workdir(tmp_path)
    zygote = Zygote()
    for command in _cases(fast=True):
        if command == "make clean":  # what the documented lines promised, before clean-up
            renders = {p.name for p in (cwd / "outputs" / "render").iterdir()}
            assert renders == {"version_0", "version_1", "version_2"}  # one folder per run
            assert (cwd / "outputs" / "demo" / "render" / "version_0" / "fc.png").is_file()
            ckpt = cwd / "outputs" / "robust_photo_patches" / "checkpoints" / "last.ckpt"
            assert ckpt.is_file()
            assert not (cwd / "config.yaml").exists()
        t0 = time.monotonic()
        out = _run(command, COVERAGE[command], cwd, timeout=600,  # type: ignore[arg-type]
                   zygote=zygote)
        print(f"{time.monotonic() - t0:6.1f} s  {command}")  # pytest -s: where the time goes
        if command.startswith("lightning-fv render "):
            assert "wrote " in out and "units.safetensors" in out
    zygote.close()
    assert not (cwd / "outputs").exists()  # make clean-outputs ran last


@pytest.mark.full
@pytest.mark.parametrize("command", _cases(fast=False))
def test_documented_command_as_written(command: str, tmp_path_factory) -> None:
    cwd = tmp_path_factory.getbasetemp() / "docs_as_written"
    if not cwd.exists():
        cwd.mkdir()
        _workdir(cwd)
    out = _run(command, [], cwd, timeout=3 * 3600)  # asserts a zero exit status
    assert "Traceback (most recent call last)" not in out
