"""pcas: Progressive Cross-modal Alignment for Semantics (weakly supervised audio-visual semantic segmentation)."""

__version__ = "0.1.0"
