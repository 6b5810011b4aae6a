#!/usr/bin/env bash
# Paper-scale MNIST work on a lent GPU, in calls of at most 10 minutes that resume each other:
# the 4 MNIST models at the paper's schedule (160 epochs, resumable per epoch), then the 20-run
# searches of the MNIST settings (ST settings as soon as their model is trained), until DEADLINE
# seconds have passed. Everything made is packed into $OUT/paper.tgz; unpacked here, the next call
# carries results/models/paper and results/search/paper back and goes on where this one stopped.
#
#   DEADLINE=540 SEARCH_WORKERS=4 bash benchmarks/gpu_paper_mnist.sh
set -u
DEADLINE=${DEADLINE:-540}
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
start=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
export LOSSBOOK_DATA=${LOSSBOOK_DATA:-$PWD/.data} TQDM_DISABLE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# 1. the models: all four at once (each is far too small to fill the GPU alone); each resumes
#    from its last finished epoch (carry results/models/paper) and stops cleanly at the deadline
for m in net1-st net2-st net1-at net2-at; do
  timeout -k 15 -s INT "$(left)" $PY -m lossbook train --dataset mnist --net "${m%-*}" --training "${m#*-}" \
    --scale paper > "$OUT/logs/train-$m.log" 2>&1 &
done
wait

# 2. eps of each trained model's settings by the auto rule
for m in net1-st net2-st net1-at net2-at; do
  [ -f "results/models/paper/mnist-$m.pt" ] || { echo "mnist-$m: not trained yet"; continue; }
  for norm in linf l1 l2; do
    [ "$(left)" -gt 10 ] && timeout -k 10 -s INT "$(left)" $PY -c "from lossbook.search.settings import auto_setting as a; \
print(a('mnist', '${m%-*}', '${m#*-}', '$norm', 'paper', n_images=1000))" >> "$OUT/logs/calibration.log" 2>&1
  done
done

# 3. the 20-run searches of the trained models' settings, SEARCH_WORKERS at a time. Each process holds
#    several GiB of GPU memory at the measured chunk: 10 at once ran out of the H100's 80 GiB.
SEARCH_WORKERS=${SEARCH_WORKERS:-0}
for m in net1-st net2-st net1-at net2-at; do
  [ -f "results/models/paper/mnist-$m.pt" ] || continue
  for norm in linf l1 l2; do for seed in $(seq 0 19); do echo "${m%-*} ${m#*-} $norm $seed"; done; done
done | { [ "$SEARCH_WORKERS" -gt 0 ] && xargs -P "$SEARCH_WORKERS" -L 1 bash -c 'l=$(( '"$DEADLINE"' - ($(date +%s) - '"$start"') ));
  [ "$l" -gt 30 ] && timeout -k 15 -s INT "$l" '"$PY"' -m lossbook search --dataset mnist --net $0 --training $1 --norm $2 \
  --scale paper --runs 1 --seed $3 >> "'"$OUT"'/logs/search-mnist-$0-$1-$2.log" 2>&1'; cat > /dev/null; }

echo "done after $(( $(date +%s) - start )) s"
# one file back (the tool returns at most 8): results, resume states and logs
tar czf "$OUT/paper.tgz" results/models/paper results/search/paper "$OUT/logs" 2>/dev/null
rm -rf "$OUT/logs"
