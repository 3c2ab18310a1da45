"""Names in the released checkpoint layout (Soul-AILab/SoulX-FlashHead-1_3B plus facebook/wav2vec2-base-960h):

    SoulX-FlashHead-1_3B/
      Model_Lite/  Model_Pro/        config.json + diffusion_pytorch_model.safetensors (or shards + index)
      VAE_LTX/                       diffusers AutoencoderKLLTXVideo folder (Lite)
      VAE_Wan/Wan2.1_VAE.pth         the Wan2.1 VAE (Pro)
      wav2vec2-base-960h/            where `flashhead download` puts the audio encoder
"""

from pathlib import Path

RELEASE_NAME = "SoulX-FlashHead-1_3B"  # the checkpoint root's folder name as downloaded
MODEL_REPO = "Soul-AILab/" + RELEASE_NAME
AUDIO_REPO = "facebook/wav2vec2-base-960h"

MODEL_DIRS = {"lite": "Model_Lite", "pro": "Model_Pro"}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
DIT_WEIGHT_FILES = (WEIGHTS_NAME, INDEX_NAME)  # what a released DiT folder holds (one file, or shards + index)
VAE_WAN_FILE = Path("VAE_Wan") / "Wan2.1_VAE.pth"
VAE_LTX_DIR = Path("VAE_LTX")
VAE_DIRS = {"pro": VAE_WAN_FILE.parent.name, "lite": VAE_LTX_DIR.name}
AUDIO_DIR = "wav2vec2-base-960h"
AUDIO_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a transformers wav2vec2 folder holds one of them
