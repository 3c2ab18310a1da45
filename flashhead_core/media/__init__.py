"""Pixels, samples and files: what goes into the model and what comes out of it, with no model code.

    image.py          portraits: load any image input, check sizes, the reference tensor, colour matching
    frames.py         decoded frames [1, 3, T, H, W] in [-1, 1] <-> images [n, H, W, 3] in 0..1
    face.py           FaceCrop: find the face in a large portrait, crop it square, paste frames back
    sample_reader.py  SampleReader: re-block a stream of sample pieces into reads of any length
    video_io.py       VideoWriter: frames + soundtrack -> MP4 (PyAV), chunk by chunk, with an optional live tee

Nothing is imported here: `import flashhead_core.media.sample_reader` loads that module alone.
"""
