#!/usr/bin/env bash
# The GPU figures still pending in benchmarks/RESULTS.md, in parts that each fit one
# 10-minute call of the device tool. Run from the repository root on a CUDA machine:
#
#   bash benchmarks/gpu_pending.sh ifv        # Grad-IFV Jacobian (issue 8), ~3 min
#   bash benchmarks/gpu_pending.sh tests      # pytest -m gpu, ~3 min
#   bash benchmarks/gpu_pending.sh spearman   # ~2 min
#   bash benchmarks/gpu_pending.sh pgd        # needs torchattacks importable (a wheel), ~6 min
#   bash benchmarks/gpu_pending.sh invariant  # ~8 min
#   bash benchmarks/gpu_pending.sh maco       # MACO vs Horama 0.3 on a ViT (issue 15), ~3 min;
#                                             # needs horama 0.3.0 installed (pip, --no-deps)
#
# Each command's full output goes to $OUT/<name>.txt (OUT defaults to benchmarks/out);
# the last lines of each are echoed. PYTHON picks the interpreter (default python3), and
# the package is imported from the working tree (PYTHONPATH=.), so no install is needed
# where torch, torchvision, lightning, torchmetrics and safetensors are present.
set -u
part=${1:?"usage: $0 ifv|tests|spearman|pgd|invariant|maco"}
out=${OUT:-benchmarks/out}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

run() {  # run NAME SECONDS ARGS...: one command, its output kept in $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: $py $*"
    timeout "$limit" "$py" "$@" >"$out/$name.txt" 2>&1
    echo "rc=$?"
    tail -n 4 "$out/$name.txt"
}

case $part in
ifv | tests | spearman | pgd | invariant | maco) ;;
*)
    echo "unknown part '$part': valid parts are ifv, tests, spearman, pgd, invariant, maco"
    exit 2
    ;;
esac
"$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' \
    || { echo "no CUDA device"; exit 1; }

case $part in
ifv)
    run ifv_default 150 benchmarks/bench_ifv_jacobian.py
    run ifv_channels_last 150 benchmarks/bench_ifv_jacobian.py --channels-last
    run ifv_channels_last_bf16 150 benchmarks/bench_ifv_jacobian.py --channels-last --bf16
    run ifv_channels_last_chunk128 150 benchmarks/bench_ifv_jacobian.py --channels-last \
        --chunk-size 128 --skip-ablation
    ;;
tests)
    run gpu_tests 500 -m pytest -m gpu -q -rA tests/gpu tests/invariant/test_gpu_invariant.py
    ;;
spearman)
    run spearman 500 benchmarks/bench_spearman.py --device cuda
    ;;
pgd)
    run pgd_fp32 280 benchmarks/bench_pgd.py
    run pgd_bf16_channels_last 280 benchmarks/bench_pgd.py --bf16 --channels-last
    ;;
invariant)
    run invariant_b1_b8 380 benchmarks/bench_invariant.py --batches 1 8 --repeats 2
    run invariant_b32 180 benchmarks/bench_invariant.py --batches 32 --repeats 1
    ;;
maco)
    run maco_vit_32units 500 benchmarks/bench_maco.py --device cuda --units 32 --peer-units 4 \
        --steps 256 --crops 6 --image-size 1280 --json "$out/maco_vit_32units.json"
    ;;
esac
