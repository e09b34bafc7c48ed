"""Modality-free BYOL engine: heads, losses, predictors, the BYOL model and the method registry.

Nothing here imports audio- or image-specific code; encoders come from the caller.
"""
from .byol import BYOL, BYOL_PAIRS, tau_at
from .heads import MLP, make_norm
from .losses import LOSSES, LossTerm, byol_loss, cross_cosine_loss, cross_sigmoid_loss
from .methods import METHODS, MethodSpec, build_method, get_method
from .predictors import PREDICTORS, ClosedFormPredictor, build_predictor

__all__ = [
    "BYOL", "BYOL_PAIRS", "tau_at", "MLP", "make_norm",
    "LOSSES", "LossTerm", "byol_loss", "cross_cosine_loss", "cross_sigmoid_loss", "METHODS", "MethodSpec",
    "build_method", "get_method", "PREDICTORS", "ClosedFormPredictor", "build_predictor",
]
