"""Model configurations and (for decode) the NVFP4 model engine."""

from harness.models.configs import (MODELS, LinearShape, ModelConfig, UnknownNameError,
                                    get_model)

__all__ = ["MODELS", "LinearShape", "ModelConfig", "UnknownNameError", "get_model"]
