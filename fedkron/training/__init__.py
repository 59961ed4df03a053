"""Local training and evaluation on a client's tensors: encoder heads (:mod:`.local`) and language
models (:mod:`.language_model`), over the shared pieces in :mod:`.common`."""
