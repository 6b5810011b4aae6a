#!/usr/bin/env bash
# Paper-scale MNIST work on a lent GPU, in calls of at most 10 minutes that resume each other:
# the 4 MNIST models at the paper's schedule (160 epochs, resumable per epoch), then the 20-run
# searches of the MNIST settings (ST settings as soon as their model is trained), until DEADLINE
# seconds have passed. Everything made is packed into $OUT/paper.tgz; unpacked here, the next call
# carries results/models/paper and results/search/paper back and goes on where this one stopped.
#
#   DEADLINE=540 WORKERS=5 bash benchmarks/gpu_paper_mnist.sh
set -u
DEADLINE=${DEADLINE:-540}
WORKERS=${WORKERS:-5}  # search processes per model
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
start=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
export LOSSBOOK_DATA=${LOSSBOOK_DATA:-$PWD/.data} TQDM_DISABLE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# 1. the models: all four at once (each is far too small to fill the GPU alone)
declare -A train_pid
for m in net1-st net2-st net1-at net2-at; do
  timeout -k 20 -s INT "$(left)" $PY -m lossbook train --dataset mnist --net "${m%-*}" --training "${m#*-}" \
    --scale paper > "$OUT/logs/train-$m.log" 2>&1 &
  train_pid[$m]=$!
done

# 2. the searches of one model, once it is trained: eps by the auto rule (one process), then the
#    20 runs, WORKERS at a time; a run interrupted by the deadline resumes from its checkpoint
search_model() {  # net training
  while kill -0 "${train_pid[$1-$2]}" 2>/dev/null; do sleep 5; done  # not a child of this subshell: poll
  [ -f "results/models/paper/mnist-$1-$2.pt" ] || { echo "mnist-$1-$2: not trained yet, no search"; return; }
  for norm in linf l1 l2; do
    timeout -k 20 -s INT "$(left)" $PY -c "from lossbook.search import auto_setting as a; \
print(a('mnist', '$1', '$2', '$norm', 'paper', n_images=1000))" >> "$OUT/logs/calibration.log" 2>&1
  done
  for norm in linf l1 l2; do for seed in $(seq 0 19); do echo "$1 $2 $norm $seed"; done; done |
    xargs -P "$WORKERS" -L 1 bash -c 'timeout -k 20 -s INT "$(( '"$DEADLINE"' - ($(date +%s) - '"$start"') ))" \
      '"$PY"' -m lossbook search --dataset mnist --net $0 --training $1 --norm $2 --scale paper --runs 1 --seed $3 \
      >> "'"$OUT"'/logs/search-mnist-$0-$1-$2.log" 2>&1'
}
search_model net1 st &
search_model net2 st &
search_model net1 at &
search_model net2 at &
wait
echo "done after $(( $(date +%s) - start )) s"
tar czf "$OUT/paper.tgz" results/models/paper results/search/paper 2>/dev/null
tail -n 3 "$OUT"/logs/*.log
