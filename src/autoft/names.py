"""Names every layer shares: the loss terms and the override keys of the searched hyperparameters.

The one list of loss terms (docs/design.md section 3): the schema's `method.loss_weights` fields,
the objective's terms, the hyperparameters type and the search space all read it from here.
ce is fixed (weight 1 by default) and never searched; the other eight are.

This module imports nothing, so that the lowest layers may import it.
"""

LOSS_NAMES = ("ce", "hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")
SEARCHED_LOSSES = tuple(name for name in LOSS_NAMES if name != "ce")

# a trial's parameters are Hydra override paths: the search space's keys, the trial's `params`
LOSS_PREFIX = "method.loss_weights."  # + a loss name
LR_SCALE_KEY = "trainer.lr_scale"
WEIGHT_DECAY_KEY = "trainer.weight_decay"
SEED_KEY = "seed"
