#!/usr/bin/env bash
# The GPU check, for any machine with an NVIDIA GPU (about 8 minutes on one): the CUDA tests, `suite doctor` on
# Table 3 and Table 1 at their paper recipes (on the digits that ship offline, so no dataset is needed), and the
# GPU benchmark of the joint step. Every output lands in one folder, with summary.md on top.
#
#   tools/gpu-check.sh [OUT_DIR]          (default: $OUT, else ./gpu-check)
#
# It runs the checkout as it is (PYTHONPATH), under the machine's own python3 and torch (>= 2.4). Shared GPU
# images often hold torch (2.11 with torchvision 0.26 is a common pair), pandas, scikit-learn, pytest and
# pytest-benchmark, but not pydantic, which manifests need. Bring its wheels in .whl/ beside this checkout (no
# network is needed there), made where pip works with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic pydantic_core typing-inspection annotated-types typing_extensions
# MLflow is not needed: the doctor's tracking check then warns, everything else runs.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
py=${PYTHON:-python3}
work=$(mktemp -d)
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

if ! $py -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl \
    && export PYTHONPATH="$work/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stage() {  # stage NAME LIMIT_SECONDS LOG COMMAND...: one step, bounded, its output in LOG
  local name=$1 limit=$2 log=$3 start rc
  shift 3
  echo "== $name (at most ${limit} s) -> $log"
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  echo "$name|$rc|$(($(date +%s) - start))|$limit" >>"$work/stages"
  tail -n 3 "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
} >"$work/environment" 2>&1

stage "CUDA tests" 160 "$out/test_cuda.log" \
  $py -m pytest tests/test_cuda.py -q -o addopts="" -p no:cacheprovider -p no:randomly -ra --durations=15 \
  --junitxml="$out/test_cuda.xml"
stage "doctor, Table 3 (paper recipe, digits)" 160 "$out/doctor-table3.log" \
  $py -m suite doctor experiments/table3_cifar100_resnet20_2468.yaml --profile paper --set data.dataset=digits \
  --results "$work/results"
stage "benchmark" 120 "$out/bench.log" \
  env SUITE_BENCH_DEVICE=cuda $py -m pytest tests/benchmarks --benchmark-only -o addopts="" -p no:cacheprovider \
  -p no:randomly -q --benchmark-json="$out/bench.json"
stage "doctor, Table 1 (paper recipe, digits at 224)" 100 "$out/doctor-table1.log" \
  $py -m suite doctor experiments/table1_imagenet_2468.yaml --profile paper --set data.dataset=digits \
  --set data.image_size=224 --compile none --results "$work/results"

$py tools/gpu_check_summary.py "$out" "$work" >"$out/summary.md"
cat "$out/summary.md"
