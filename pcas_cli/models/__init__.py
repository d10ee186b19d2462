"""PCAS models: timm visual encoder, AST-style audio encoder with Temporal Visual Prompting, heads, seg decoder."""

from pcas_cli.models.audio import (
    AUDIO_PRESETS,
    AudioEncoder,
    AudioOutput,
    ClassAttentionHead,
    SequenceLayout,
    build_audio_encoder,
    load_audio_weights,
    patch_grid,
)
from pcas_cli.models.heads import ProjectionHead
from pcas_cli.models.seg import SegmentationModel
from pcas_cli.models.visual import (
    VISUAL_PRESETS,
    LoadReport,
    VisualEncoder,
    VisualOutput,
    build_visual_encoder,
    load_backbone_weights,
)

__all__ = [
    "AUDIO_PRESETS",
    "VISUAL_PRESETS",
    "AudioEncoder",
    "AudioOutput",
    "ClassAttentionHead",
    "LoadReport",
    "ProjectionHead",
    "SegmentationModel",
    "SequenceLayout",
    "VisualEncoder",
    "VisualOutput",
    "build_audio_encoder",
    "build_visual_encoder",
    "load_audio_weights",
    "load_backbone_weights",
    "patch_grid",
]
