"""Resolving a Hugging Face Hub repo id (``org/name`` or ``org/name@revision``) to a local snapshot directory.

Only the files a merge needs are fetched: top-level weights, JSON configs and tokenizer files. Safetensors are
preferred; ``.bin`` weights are fetched only when the repo has no safetensors, so a repo that ships both does
not cost a second copy of the model. ``huggingface_hub`` honours HF_HUB_OFFLINE and the cache (HF_HOME, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

from mergesmith.errors import CheckpointError

_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")

_COMMON = ["*.json", "*.model", "*.txt", "*.tiktoken"]  # configs, index files, tokenizers, vocabularies
_SAFETENSORS = ["*.safetensors", *_COMMON]
_TORCH = ["*.bin", "*.pt", "*.pth", *_COMMON]
_TOP_LEVEL_ONLY = ["*/*"]  # skip onnx/, original/, ... subfolders: other formats of the same weights


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``text`` looks like a hub repo id, else None."""
    m = _REPO_ID.match(text)
    if m is None or ".." in text:
        return None
    return m.group("repo"), m.group("revision")


def resolve_hub(text: str) -> Path:
    """Download (or find in the cache) the merge-relevant files of a hub repo; CheckpointError if impossible."""
    parsed = parse_repo_id(text)
    assert parsed is not None, text
    repo_id, revision = parsed
    directory = _snapshot(text, repo_id, revision, _SAFETENSORS)
    if not any(directory.glob("*.safetensors")):
        directory = _snapshot(text, repo_id, revision, _TORCH)
    return directory


def _snapshot(text: str, repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=_TOP_LEVEL_ONLY
            )
        )
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise CheckpointError(
            f"'{text}' is not a local path, and as a Hugging Face model it is not in the local cache ({why}); "
            f"download it first with `hf download {repo_id}{f' --revision {revision}' if revision else ''}` on a "
            f"machine with network access (unset HF_HUB_OFFLINE), or pass a local directory"
        ) from None
    except errors.GatedRepoError:
        raise CheckpointError(
            f"'{text}': the Hugging Face model is gated; accept its licence on the Hub and log in with `hf auth login`"
        ) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"'{text}' is neither a local path nor a Hugging Face model you can access; check the spelling, or log "
            f"in with `hf auth login` if it is private"
        ) from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(
            f"'{text}': revision '{revision}' does not exist in {repo_id}; use a branch, tag or commit of that repo"
        ) from None
    except errors.HFValidationError as e:
        raise CheckpointError(
            f"'{text}' is not a local path nor a valid Hugging Face repo id ({e}); fix the path"
        ) from None
    except (errors.HfHubHTTPError, OSError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"'{text}': downloading from the Hugging Face Hub failed ({first_line}); retry, or download it with "
            f"`hf download {repo_id}` and pass the local directory"
        ) from None
