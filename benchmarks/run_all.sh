#!/usr/bin/env bash
# The committed CPU benchmark results (results/bench/): run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=results/bench
mkdir -p $out
$PY benchmarks/bench_attacks.py --dataset mnist --net net1 --k 32 --n 1000 --json $out/mnist-net1-cpu.json | tee $out/mnist-net1-cpu.txt
$PY benchmarks/bench_attacks.py --dataset cifar10 --net net1 --k 16 --n 500 --json $out/cifar10-net1-cpu.json | tee $out/cifar10-net1-cpu.txt
for seed in 0 1; do
  $PY benchmarks/bench_search.py --setting mnist-net1-at-linf --preset cpu --seed $seed --json $out/search-mnist-net1-at-linf-seed$seed.json \
    | tee $out/search-mnist-net1-at-linf-seed$seed.txt
done
# the semantic cache at the grid's budget (one unseeded run, as the grid's seed 0)
$PY benchmarks/bench_search.py --setting mnist-net1-at-linf --preset grid --seed 0 --json $out/search-grid-mnist-net1-at-linf-seed0.json \
  | tee $out/search-grid-mnist-net1-at-linf-seed0.txt
