#!/usr/bin/env bash
# A GPU check in one script (one H100/H200-class card; the most valuable steps first): the CUDA paths
# (torch.compile, bf16 autocast, SDPA/FlashAttention) run end to end, and their figures go to at most
# eight files in $OUT, as many as the device tool brings back: env.txt, bench_gen.json, bench_train.json,
# profile.json, bench_more.json, log.txt, evals.jsonl and, if a step failed, failures.txt. It uses the
# machine's own torch (no install; it needs tokenizers, numpy, pytest and hypothesis there):
#
#     OUT=/tmp/gpu bash experiments/gpu_check.sh            # on the GPU machine
#     SMALL=1 OUT=/tmp/dry bash experiments/gpu_check.sh    # a CPU dry run of the same steps
set -uo pipefail     # no -e: a step that fails is written to $OUT/failures.txt and the next ones still run
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_check}
RUN=out/gpu_check_run                                        # checkpoints stay on the machine
mkdir -p "$OUT" "$RUN"
for f in env.txt bench_gen.json bench_train.json profile.json bench_more.json log.txt evals.jsonl failures.txt; do
  rm -f "$OUT/$f"; done
rm -f "$RUN/bench_gen64.json" "$RUN/bench_memory.json"
fail() { echo "step failed (exit $?): $1" | tee -a "$OUT/failures.txt"; }
more() {   # bench_more.json: the smaller bench results that have finished so far, under one key each
  python3 -c "import json, os, sys; json.dump({k: json.load(open(f)) for k, f in zip(sys.argv[1::2], sys.argv[2::2])
              if os.path.exists(f) and os.path.getsize(f)}, sys.stdout, indent=1)" \
    generation_batch64 "$RUN/bench_gen64.json" memory "$RUN/bench_memory.json" > "$OUT/bench_more.json" || fail bench_more
}
if [ "${SMALL:-0}" = 1 ]; then
  PRESET=config/test.py; DEV=cpu; EXTRA="--dataset=sotu --tokenizer=bytes --vocab_size=257"; ITERS=10; AE_ITERS=10
else
  PRESET=config/gpu_small.py; DEV=cuda; EXTRA=""; ITERS=200; AE_ITERS=1000
fi
{ python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true; } | tee "$OUT/env.txt"
# The steps run in order of value, so that a run stopped early (the device tool stops a command at 10
# minutes; compile times at these sizes on a GPU are not yet measured) keeps what finished:
# 1. throughput at the preset's sizes: generation at batch 1 (eager, compiled, compiled with CUDA
#    graphs, whose tokens a CUDA test then checks), then bf16 training (eager and compiled, 3
#    compilations, beside the nanoGPT-style reference);
# 2. the end-to-end run (train.py, bf16, compiled) and its evaluations;
# 3. the profiles (float32 eager training steps, compiled decoding steps; their tables in profile.json
#    under "table" and as printed in log.txt), generation at batch 64, the energy loss's memory;
# 4. the CPU suite. bench.py's stderr goes to log.txt, as do the training runs' logs.
LOG="$OUT/log.txt"
python3 bench.py $PRESET --device=$DEV $EXTRA --what=generation --gen_cudagraphs=true > "$OUT/bench_gen.json" 2>> "$LOG" || fail bench_gen
# the CUDA-graph tokens against the compiled step's, before the figures above are read (skipped on CPU)
python3 -m pytest -p no:cacheprovider tests/test_decode.py -k cuda_graphs 2>&1 | tail -3 | tee -a "$LOG" || fail test_cuda_graphs
python3 bench.py $PRESET --device=$DEV $EXTRA --what=training --train_dtypes=bfloat16 --train_compile=both \
  > "$OUT/bench_train.json" 2>> "$LOG" || fail bench_train
# 2. end to end, compiled, bf16 (auto on CUDA): the AE, then CALM, then the baseline, then evaluation
COMMON="$PRESET --device=$DEV $EXTRA --out_dir=$RUN --max_iters=$ITERS --eval_interval=$ITERS --num_samples=2 --overwrite=true"
python3 train.py $COMMON --model=calm --ae_max_iters=$AE_ITERS 2>&1 | tee -a "$LOG" || fail train_calm
python3 train.py $COMMON --model=gpt 2>&1 | tee -a "$LOG" || fail train_gpt
for m in ae calm gpt; do
  python3 eval.py --ckpt="$RUN/$m.pt" --device=$DEV --out="$RUN/eval_$m.json" > /dev/null \
    && python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" "$RUN/eval_$m.json" >> "$OUT/evals.jsonl" \
    || fail "eval_$m"
done
python3 bench.py $PRESET --device=$DEV $EXTRA --what=profile > "$OUT/profile.json" 2>> "$LOG" || fail profile
python3 bench.py $PRESET --device=$DEV $EXTRA --what=generation --gen_batch=64 --gen_tokens=128 \
  > "$RUN/bench_gen64.json" 2>> "$LOG" || fail bench_gen64
more
python3 bench.py $PRESET --device=$DEV $EXTRA --what=memory > "$RUN/bench_memory.json" 2>> "$LOG" || fail bench_memory   # energy-loss memory
more
python3 -m pytest -x -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/env.txt" || fail tests   # the CPU suite, this torch
echo "done: $(ls "$OUT" | tr '\n' ' ')"
n=$(ls "$OUT" | wc -l); [ "$n" -le 8 ] || echo "warning: $n files in $OUT, the device tool brings back 8"
if [ -s "$OUT/failures.txt" ]; then cat "$OUT/failures.txt"; exit 1; fi
