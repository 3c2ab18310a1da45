"""Reliability suite (issue 10): long runs, bad input, faults. Nothing lost, nothing leaked.

test_soak.py (memory over a long stream), test_bad_input.py (clear errors before any work, inputs that must work),
test_properties.py (Hypothesis: windowing, context cache, chunking), test_faults.py (interrupts, a full disk,
concurrent sessions, global state). FLASHHEAD_SOAK_SECONDS=3600 turns the soak into the 1-hour run.
"""
