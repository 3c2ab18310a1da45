"""Integrations with other frameworks, each optional: imported only by whoever uses it (never by the rest of the
core). pipecat: FlashHead as a pipecat video service (`pip install comfyui-flashhead[conversation]`)."""
