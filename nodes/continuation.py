"""The FLASHHEAD_STATE wire: where a stream-mode run stopped (flashhead_core.generation.continuation.ContinuationState: motion latents,
noise and VAE generator states, chunk index, the active identity, the audio context cache and the samples past the
last whole chunk), so a second FlashHead Talking Video, or the next pass of a ComfyUI loop, continues exactly where
the first stopped.

FlashHead Talking Video outputs it (last output) and takes it (optional, last input): with a state the seed is unused
(the state carries the generators), the same portrait continues exactly and another portrait is a clean identity cut.
The state is immutable and on the CPU, so ComfyUI's cache can hand it to any later run.
"""

from __future__ import annotations

from ._wires import State

STATE_INPUT_TOOLTIP = ("Optional: the state output of an earlier FlashHead Talking Video (stream mode, same model, "
                       "size and context). The video continues exactly where that one stopped: the two videos "
                       "concatenated equal one run over both audios. The seed is then unused.")
STATE_OUTPUT_TOOLTIP = ("Where this run stopped (motion, noise generators, identity, audio context): connect to the "
                        "state input of the next FlashHead Talking Video to continue. A once-mode state refuses to "
                        "continue (once mode encodes the whole track at once).")


def state_input():
    return State.Input("state", optional=True, tooltip=STATE_INPUT_TOOLTIP)


def state_output():
    return State.Output(display_name="state", tooltip=STATE_OUTPUT_TOOLTIP)
