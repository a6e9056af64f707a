"""Inputs on the Hugging Face Hub, wherever a local path is accepted (models, prompt sets, general data,
eval benchmarks, preference data):

* `hf://datasets/<org>/<name>/<file>`  one file of a dataset repo (JSONL prompts, a benchmark, ...)
* `hf://<org>/<name>[/<file>]`         a model repo (its snapshot folder), or one of its files
* `<org>/<name>`                       a model id, when no local folder of that name exists

The local HF cache (`HF_HUB_CACHE` / `HF_HOME`) is read first, so a cluster whose compute nodes have no
network works with `HF_HUB_OFFLINE=1` once the files were fetched (e.g. `hf download` on a login node);
otherwise the file is downloaded into the cache. A miss is one line naming the input and the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.run.paths import absolute

PREFIX = "hf://"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubInputError(RuntimeError):
    """A hub input that is neither in the local cache nor downloadable (a user error: one line)."""


def is_hub_id(value: str) -> bool:
    """`org/name` that is not a local path: a model id on the hub."""
    return bool(_REPO_ID.match(value)) and not absolute(value).exists()


def input_path(value: str | Path, key: str = "") -> Path:
    """A user-given input as a local path: hub inputs resolve to their file / snapshot in the HF cache,
    anything else to an absolute path (relative to the repo root; its existence is checked by the caller)."""
    text = str(value)
    if text.startswith(PREFIX):
        return _from_hub(text, text[len(PREFIX) :], key)
    if is_hub_id(text):
        return _from_hub(text, text, key)
    return absolute(text)


def _from_hub(original: str, spec: str, key: str) -> Path:
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    repo_type = "model"
    if spec.startswith("datasets/"):
        repo_type, spec = "dataset", spec[len("datasets/") :]
    parts = spec.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise HubInputError(f"{_where(key)}{original}: expected hf://[datasets/]<org>/<name>[/<file>]")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename, repo_type=repo_type))
        return Path(snapshot_download(repo_id, repo_type=repo_type))
    except Exception as e:  # offline miss, unknown repo or file, no network: all one user-facing line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubInputError(
            f"{_where(key)}{original}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and not "
            f"downloadable ({type(e).__name__}: {reason[:200]}); fetch it first (`hf download {repo_id}"
            f"{' --repo-type dataset' if repo_type == 'dataset' else ''}`) or give a local path"
        ) from None


def _where(key: str) -> str:
    return f"config key '{key}': " if key else ""
