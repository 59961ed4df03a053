"""Server-side aggregation: a decoding wrapper (:mod:`.wrapper`) in front of Flower's own strategies
(:mod:`.registry`), exact mode and its error measurement (:mod:`.exactness`).

Import from the submodules; this package imports nothing itself, so that the run config can read
the strategy names without pulling in the server.
"""
