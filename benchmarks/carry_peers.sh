#!/usr/bin/env bash
# Prepare what the GPU machine cannot download: the peers' wheels in .whl/ and the official
# LightningDiT code in .carry/LightningDiT/ (both git-ignored). Run here, where pip reaches
# the package index, from the repository root:
#
#   bash benchmarks/carry_peers.sh
#
# then name `.whl` and `.carry` in the device tool's `carry` list; benchmarks/gpu_pending.sh
# installs the wheels into /tmp/site on the GPU machine (pip --no-index --target) before it
# runs anything. The GPU image has Python 3.12 with torch, torchvision, lightning,
# torchmetrics, timm, torchdiffeq and safetensors already; only the peers travel.
set -eu
dest=.whl
mkdir -p "$dest"
# peer of benchmarks/bench_render.py (torch-lucent 0.1.8 and what its render path imports),
# of bench_pgd.py (torchattacks, captum's robust.PGD), of bench_maco.py (Horama 0.3.0), and
# jsonargparse for lightning_fv.cli (imported by some tests)
wheels=(
    torch-lucent==0.1.8 kornia==0.9.0 kornia-rs==0.2.0 decorator==5.3.1
    torchattacks==3.5.1 captum==0.9.0 horama==0.3.0
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
)
for w in "${wheels[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest" "$w"
done
ls -l "$dest"
# the official LightningDiT code (its model and transport/sampler), for bench_dit_official.py
bash benchmarks/carry_lightningdit.sh
du -sh "$dest" .carry
