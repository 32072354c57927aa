"""GAN training: the loop, EMA, DiffAugment, snapshots/state, sampling.

Import the submodules directly (``ganops.training.loop``, ``.snapshot``, ``.sampling``); this package file stays
light so that ``load_generator`` / ``iter_samples`` do not pull in the data stack.
"""
