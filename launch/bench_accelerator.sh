#!/usr/bin/env bash
# Paper-size speed on one accelerator (GPU or TPU VM), bf16, every figure JSON from `python -m lamp_jax.bench`:
#   lamp_stage2_train_step  released LaMP stage 2 (configs/bridge.py:stage2: VLM and Motion Expert frozen), batch 32
#   lamp_sample_actions     LaMP 'paper' sample_actions, batch 1: with motion / without motion / full reconstruction
#   pi0_sample_actions      the π0-style policy 'paper' sample_actions, batch 1
#   pi0_train_step          the π0-style policy 'paper', everything trained, batch 32, every VLM / expert layer
#                           rematerialised (as openpi trains π0)
# Each JSON has step time / latency, analytic FLOPs, the matmul roof measured in the same process ([8192, 8192]
# bf16 chain), the fraction of the vendor's published peak (MFU; lamp_jax.perf.roofline) and the allocator's peak
# device memory. The first three run in parallel processes that compile at once and take turns for the timed
# sections (--timing_lock); then pi0_train_step beside lamp_sample_actions_cudnn (LaMP sample_actions with
# attention through jax.nn.dot_product_attention's cuDNN implementation, config attention='jax_cudnn'; GPU only).
# All at once would not fit in 141 GB.
#
#   bash launch/bench_accelerator.sh OUT_DIR          # paper sizes
#   bash launch/bench_accelerator.sh OUT_DIR tiny     # the same commands at tiny sizes (checks the script on a CPU)
#
# JSON goes to OUT_DIR/<name>.json; logs (and the timing lock) to $LOG_DIR (default OUT_DIR/logs). A failed
# command prints its log's last lines. $PYTHON names the interpreter (default python).
set -u
out=${1:?usage: bash launch/bench_accelerator.sh OUT_DIR [paper|tiny]}
size=${2:-paper}
log_dir=${LOG_DIR:-$out/logs}
mkdir -p "$out" "$log_dir"
export PYTHONUNBUFFERED=1 LAMP_JAX_ALLOCATOR=system
# Grow device memory as needed (several processes share the chip; the default preallocates 75 % in each).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
lock="$log_dir/timing.lock"

case "$size" in
  paper)
    lamp_train=(--config=configs/bridge.py:stage2 --stage=stage2 --batch_size=32 --repeats=10)
    lamp_infer=(--config=configs/lamp.py:paper --repeats=20)
    pi0_infer=(--config=configs/pi0.py:paper --repeats=20)
    pi0_train=(--config=configs/pi0.py:paper --config.model.vlm.remat=True --config.model.action.remat=True
               --batch_size=32 --repeats=10) ;;
  tiny)
    lamp_train=(--config=configs/sim.py:smoke --stage=action "--config.stages.action.frozen=(\"^vlm/\",\"^motion_expert/\")"
                --batch_size=3 --repeats=2)
    lamp_infer=(--config=configs/lamp.py:tiny --repeats=2)
    pi0_infer=(--config=configs/pi0.py:tiny --repeats=2)
    pi0_train=(--config=configs/pi0.py:tiny --config.model.vlm.remat=True --config.model.action.remat=True
               --batch_size=3 --repeats=2) ;;
  *) echo "unknown size '$size' (paper or tiny)" >&2; exit 2 ;;
esac

bench() {  # name, flags...: JSON to OUT_DIR/name.json, the log to OUT_DIR/name.log
  local name=$1; shift
  local start=$SECONDS
  "${PYTHON:-python}" -m lamp_jax.bench --timing_lock="$lock" "$@" >"$out/$name.json" 2>"$log_dir/$name.log"
  local status=$?
  echo "$name: exit $status after $((SECONDS - start)) s"
  if [ $status -ne 0 ]; then tail -n 15 "$log_dir/$name.log"; fi
}

bench lamp_stage2_train_step --what=train_step "${lamp_train[@]}" &
bench lamp_sample_actions --what=inference "${lamp_infer[@]}" &
bench pi0_sample_actions --what=inference "${pi0_infer[@]}" &
wait
bench pi0_train_step --what=train_step "${pi0_train[@]}" &
if [ "$size" = paper ]; then
  bench lamp_sample_actions_cudnn --what=inference "${lamp_infer[@]}" --config.model.attention=jax_cudnn &
fi
wait
