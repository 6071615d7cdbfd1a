"""Transfer learning: starting weights (sources), partial loading with its report, class-aware init,
cross-task backbone transfer, and freezing."""
from .backbone import load_backbone, load_backbone_checkpoint, stage_layers
from .class_init import class_aware_init, classifier_convs
from .freeze import (
                     STRATEGIES,
                     FreezeState,
                     apply_freeze,
                     bn_held_in_eval,
                     freeze_counts,
                     freeze_table,
                     model_parts,
                     param_groups,
                     unfreeze,
)
from .loading import TransferReport, load_matching
from .sources import create_model, source_weights

__all__ = ["STRATEGIES", "FreezeState", "TransferReport", "apply_freeze", "bn_held_in_eval",
           "class_aware_init", "classifier_convs", "create_model", "freeze_counts", "freeze_table",
           "load_backbone", "load_backbone_checkpoint", "load_matching", "model_parts", "param_groups",
           "source_weights", "stage_layers", "unfreeze"]
