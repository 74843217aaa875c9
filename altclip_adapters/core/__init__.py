"""The AltCLIP core shared by every adapter; it imports no ecosystem package."""

from .model import AltCLIP, AltCLIPOutput, contrastive_loss
from .text import TextTower
from .vision import VisionTower

__all__ = ["AltCLIP", "AltCLIPOutput", "TextTower", "VisionTower", "contrastive_loss"]
