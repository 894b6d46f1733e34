"""Names every layer shares: the one home of each list of allowed names.

The config checks (autoft.config_checks) and the library read the same tuples from here, so that no
list is written twice: the loss terms, the metrics, the shapes domains, the ImageNet test sets, the
iWildCam caption names, the image-cache and W&B modes, and the override keys of the searched
hyperparameters.

The one list of loss terms (docs/design.md section 3): the schema's `method.loss_weights` fields,
the objective's terms, the hyperparameters type and the search space all read it from here.
ce is fixed (weight 1 by default) and never searched; the other eight are.

This module imports nothing, so that the lowest layers (and a config check before torch) may import it.
"""

LOSS_NAMES = ("ce", "hinge", "entropy", "dcm", "flyp", "l1init", "l2init", "l1zero", "l2zero")
SEARCHED_LOSSES = tuple(name for name in LOSS_NAMES if name != "ce")

# a trial's parameters are Hydra override paths: the search space's keys, the trial's `params`
LOSS_PREFIX = "method.loss_weights."  # + a loss name
LR_SCALE_KEY = "trainer.lr_scale"
WEIGHT_DECAY_KEY = "trainer.weight_decay"
SEED_KEY = "seed"

# the config's allowed names (the schema's fields: autoft.config), and the library's lists they name
PHASES = ("search", "final")
TRAINABLE = ("all", "head")                                # method.trainable: both towers, or the head alone
PRECISIONS = ("auto", "fp32", "bf16")                      # trainer.precision
METRIC_NAMES = ("accuracy", "macro_f1", "worst_group_accuracy")  # autoft.metrics.METRICS, in this order
SHAPES_DOMAINS = ("studio", "garden", "snow", "night", "fog", "clutter",  # autoft.data.shapes.DOMAINS, in this order
                  "sketch", "outline", "texture")
IWILDCAM_CAPTION_NAMES = ("latin", "english")              # iWildCam's class names in the head's captions
IMAGENET_TESTS = ("imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet")
# dataset.task keys that choose only OOD-val and the tests: a run evaluating a finished run's weights
# (weights_from) may change them; any other task key may change the ID data or the head it trained
OOD_ROLE_KEYS = ("ood_val_domain", "test_domains", "ood_val_size", "subset_seed", "subset_dir", "test_cue")
# dataset.task keys of a domain dataset's roles (shapes, folder datasets): W&B's run config holds them,
# so the runs of a benchmark's splits, which share a group, can be told apart
DOMAIN_ROLE_KEYS = ("id_domain", "ood_val_domain", "test_domains")
IMAGE_CACHE_MODES = ("auto", "read", "off")                # trainer.image_cache (autoft.data.image_cache)
WANDB_MODES = ("auto", "online", "offline", "disabled")    # logger.mode (autoft.reporting.wandb_logger)

# the task builders (dataset.task._target_) whose arguments the config check knows beyond their signature
SHAPES_TARGET = "autoft.data.shapes.shapes_task"
FOLDER_TARGET = "autoft.data.folders.folder_task"
IMAGENET_TARGET = "autoft.data.imagenet.imagenet"
