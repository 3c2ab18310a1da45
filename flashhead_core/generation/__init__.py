"""Generation: the one chunk loop and what it is made of.

    sampler.py       the 4-step flow-matching update of one chunk (batched: N streams in one call)
    session.py       StreamingSession: what lives across chunks of one stream (identities, motion, noise RNGs)
    run.py           ChunkRun: the chunk loop (speech slices -> context cache -> identity -> chunk -> new frames)
    chunks.py        chunk geometry: frames to keep, chunk counts, the audio modes' windows
    continuation.py  ContinuationState: where a run stopped, and checks before continuing from it
    timeline.py      Timeline: portraits with start times, turned into an identity schedule
    batch.py         N streams stepped together through one run

Nothing is imported here; the package root exports the public names.
"""
