"""autoft: robust fine-tuning of CLIP models by searching the fine-tuning objective (AutoFT)."""

__version__ = "0.1.0"

try:  # the config schema, registered in Hydra's ConfigStore for every entry point (conf/config.yaml: base_config)
    from autoft import config as _config  # noqa: F401  (light: OmegaConf and Hydra's ConfigStore only)
except ImportError:  # the library works without Hydra
    pass
