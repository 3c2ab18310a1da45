"""Names in the released checkpoint layout (Soul-AILab/SoulX-FlashHead-1_3B plus facebook/wav2vec2-base-960h):

    SoulX-FlashHead-1_3B/
      Model_Lite/  Model_Pro/        config.json + diffusion_pytorch_model.safetensors (or shards + index)
      VAE_LTX/                       diffusers AutoencoderKLLTXVideo folder (Lite)
      VAE_Wan/Wan2.1_VAE.pth         the Wan2.1 VAE (Pro)
      wav2vec2-base-960h/            where `flashhead download` puts the audio encoder
"""

from pathlib import Path

MODEL_REPO = "Soul-AILab/SoulX-FlashHead-1_3B"
AUDIO_REPO = "facebook/wav2vec2-base-960h"

MODEL_DIRS = {"lite": "Model_Lite", "pro": "Model_Pro"}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
VAE_WAN_FILE = Path("VAE_Wan") / "Wan2.1_VAE.pth"
VAE_LTX_DIR = Path("VAE_LTX")
AUDIO_DIR = "wav2vec2-base-960h"
