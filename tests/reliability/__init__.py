"""Reliability tests: bad input everywhere it enters, fuzzing, faults, path safety (issue #7)."""
