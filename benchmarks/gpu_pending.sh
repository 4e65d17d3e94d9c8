#!/usr/bin/env bash
# The GPU figures still pending in benchmarks/RESULTS.md (issue 19), in the order.
# Run from the repository root on a CUDA machine, one PART per device call:
#
#   bash benchmarks/gpu_pending.sh first    # ifv + spearman + pgd_fp32      ~7 min
#   bash benchmarks/gpu_pending.sh second   # pgd_bf16 + dit + callbacks     ~8 min
#   bash benchmarks/gpu_pending.sh third    # invariant + sweep              ~8 min
#   bash benchmarks/gpu_pending.sh fourth   # tests + maco                   ~6 min
#
# or one part alone: ifv (§2, the missed 20× goal), spearman, pgd_fp32, pgd_bf16, dit (ours vs
# the official LightningDiT code), callbacks (§4), invariant, sweep (§3), tests, maco.
# The minutes are estimates from the H100 figures of RESULTS.md plus start-up, not readings;
# every command has its own `timeout`, so a slow one loses itself, not the rest of the call.
#
# Before the first call, here (where pip reaches the index): `bash benchmarks/carry_peers.sh`
# writes the peers' wheels to .whl/ and the official LightningDiT code to .carry/; name both
# in the device tool's `carry`. Each command's full output goes to $OUT/<name>.txt (OUT
# defaults to benchmarks/out); the last lines of each are echoed. PYTHON picks the
# interpreter (default python3); the package is imported from the working tree (PYTHONPATH=.).
set -u
part=${1:?"usage: $0 first|second|third|fourth|ifv|spearman|pgd_fp32|pgd_bf16|dit|callbacks|invariant|sweep|tests|maco"}
out=${OUT:-benchmarks/out}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

parts="ifv spearman pgd_fp32 pgd_bf16 dit callbacks invariant sweep tests maco"
case $part in
first) todo="ifv spearman pgd_fp32" ;;
second) todo="pgd_bf16 dit callbacks" ;;
third) todo="invariant sweep" ;;
fourth) todo="tests maco" ;;
*)
    case " $parts " in
    *" $part "*) todo=$part ;;
    *)
        echo "unknown part '$part': valid parts are first, second, third, fourth, ${parts// /, }"
        exit 2
        ;;
    esac
    ;;
esac

"$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' \
    || { echo "no CUDA device"; exit 1; }
if compgen -G ".whl/*.whl" >/dev/null; then  # the carried peers (benchmarks/carry_peers.sh)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing .whl/ failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

run() {  # run NAME SECONDS ARGS...: one command, its output kept in $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S)): $py $*"
    timeout "$limit" "$py" "$@" >"$out/$name.txt" 2>&1
    echo "rc=$?"
    tail -n 6 "$out/$name.txt"
}

for p in $todo; do
    case $p in
    ifv)  # §2: what each lever buys, one row each (the script also times the F.batch_norm form)
        run ifv_default 100 benchmarks/bench_ifv_jacobian.py
        run ifv_channels_last 100 benchmarks/bench_ifv_jacobian.py --channels-last --skip-ablation
        run ifv_channels_last_bf16 100 benchmarks/bench_ifv_jacobian.py --channels-last --bf16 \
            --skip-ablation
        ;;
    spearman)
        run spearman 120 benchmarks/bench_spearman.py --device cuda
        ;;
    pgd_fp32)  # ours vs floor, torchattacks and captum's robust.PGD
        run pgd_fp32 180 benchmarks/bench_pgd.py
        ;;
    pgd_bf16)
        run pgd_bf16_channels_last 150 benchmarks/bench_pgd.py --bf16 --channels-last
        ;;
    dit)  # needs .carry/LightningDiT
        run dit_official 240 benchmarks/bench_dit_official.py --device cuda \
            --json "$out/dit_official.json"
        ;;
    callbacks)
        run callbacks 240 benchmarks/bench_callbacks.py --device cuda --json "$out/callbacks.json"
        ;;
    invariant)
        run invariant_b1_b8 200 benchmarks/bench_invariant.py --batches 1 8 --repeats 1
        ;;
    sweep)
        run sweep_64_512 280 benchmarks/bench_render.py --units 64 512 --json "$out/sweep.json"
        ;;
    tests)
        run gpu_tests 240 -m pytest -m gpu -q -rA tests/gpu tests/invariant/test_gpu_invariant.py
        ;;
    maco)
        run maco_vit_32units 200 benchmarks/bench_maco.py --device cuda --units 32 \
            --peer-units 4 --steps 256 --crops 6 --image-size 1280 \
            --json "$out/maco_vit_32units.json"
        ;;
    esac
done
