#!/usr/bin/env bash
# Extract the official LightningDiT code (hustvl/LightningDiT, HEAD of a bare mirror) into
# the ignored folder .carry/LightningDiT, for benchmarks/bench_dit_official.py. The device
# machine has no network: name .carry/LightningDiT in the device tool's `carry`.
#
#   bash benchmarks/carry_lightningdit.sh [MIRROR_GIT_DIR]
#
# MIRROR_GIT_DIR defaults to /work/.mirror/hustvl+LightningDiT/repo (the bare git directory;
# the folder above it is accepted too). Only the tracked tree of HEAD is written (no .git),
# the commit is recorded in .carry/LightningDiT/COMMIT; an earlier copy is replaced. The
# tree holds two small latent demo files and images (~7 MB in all).
set -euo pipefail
mirror=${1:-/work/.mirror/hustvl+LightningDiT/repo}
if [ ! -f "$mirror/HEAD" ] && [ -f "$mirror/repo/HEAD" ]; then
    mirror=$mirror/repo
fi
git --git-dir="$mirror" rev-parse --verify -q HEAD >/dev/null \
    || { echo "no git directory with a HEAD commit at $mirror" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.carry/LightningDiT
rm -rf "$dest"
mkdir -p "$dest"
git --git-dir="$mirror" archive --format=tar HEAD | tar -x -C "$dest"
git --git-dir="$mirror" rev-parse HEAD >"$dest/COMMIT"
echo "LightningDiT $(cat "$dest/COMMIT") -> $dest ($(du -sh "$dest" | cut -f1))"
