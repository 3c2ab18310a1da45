"""`flashhead download DIR`: fetch the released weights with huggingface_hub (the only networked command)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DownloadError
from ..release import AUDIO_DIR, AUDIO_REPO, MODEL_REPO


def manual_commands(directory: Path) -> str:
    return (f"  hf download {MODEL_REPO} --local-dir {directory}\n"
            f"  hf download {AUDIO_REPO} --local-dir {directory / AUDIO_DIR}\n"
            f"or download the files in a browser from https://huggingface.co/{MODEL_REPO} and "
            f"https://huggingface.co/{AUDIO_REPO} into those folders.")


def download(directory: str | Path) -> Path:
    """Download the FlashHead checkpoint into DIR and wav2vec2-base-960h into DIR/wav2vec2-base-960h."""
    from huggingface_hub import snapshot_download

    directory = Path(directory)
    try:
        snapshot_download(MODEL_REPO, local_dir=directory)
        snapshot_download(AUDIO_REPO, local_dir=directory / AUDIO_DIR,
                          allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as e:  # offline, proxy, missing repo: the fix is the same, say it plainly
        raise DownloadError(f"download failed ({type(e).__name__}: {e}).\nWithout network access to Hugging Face, "
                         f"fetch the weights on another machine (the `hf` command comes with huggingface_hub) and copy "
                         f"them here:\n{manual_commands(directory)}") from e
    return directory
