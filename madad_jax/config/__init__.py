"""The configuration: `default_config()` (every key, declared once) and `validate()` (every
rule, the one gate before any work).

`defaults` builds the config from one small builder per section; `validation` holds the
rules, with the helpers of `checks`. The names below are the package's public face, imported
by `configs/*.py` as `from madad_jax.config import default_config, unet`.
"""

from madad_jax.config.checks import ConfigError, show
from madad_jax.config.defaults import default_config, demo_data
from madad_jax.config.validation import (
    DISTRIBUTED,
    EVAL_CHECKPOINTS,
    EVALUATING_MODES,
    LR_SCHEDULES,
    MAP_SOURCES,
    MODES,
    PREDICT_GEOMETRIES,
    PROTOCOLS,
    TRAINING_MODES,
    validate,
)
from madad_jax.models.presets import DIT_PRESETS, UNET_PRESETS, dit, medical_vae, unet

# Re-exported: configs/*.py build their configs from these.
__all__ = ["DISTRIBUTED", "DIT_PRESETS", "EVALUATING_MODES", "EVAL_CHECKPOINTS", "LR_SCHEDULES",
           "MAP_SOURCES", "MODES", "PREDICT_GEOMETRIES", "PROTOCOLS", "TRAINING_MODES",
           "UNET_PRESETS", "ConfigError", "default_config", "demo_data", "dit", "medical_vae",
           "show", "unet", "validate"]
