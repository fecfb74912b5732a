"""Pure tensor functions behind every lit-attr metric (no state)."""

from lit_attr.functional.activation_deviation import (
    ActivationDeviationResult,
    activation_deviation,
    resolve_probe_layers,
)
from lit_attr.functional.axioms import completeness, input_invariance, non_sensitivity, random_logit
from lit_attr.functional.completeness import completeness_error
from lit_attr.functional.complexity import complexity, effective_complexity, sparseness
from lit_attr.functional.dasgupta import consistency, sufficiency_dasgupta
from lit_attr.functional.eraser import comprehensiveness, sufficiency
from lit_attr.functional.faithfulness import faithfulness_correlation, faithfulness_estimate, sensitivity_n
from lit_attr.functional.focus import focus
from lit_attr.functional.insertion_deletion import InsertionDeletionResult, insertion_deletion
from lit_attr.functional.localization import localization_auroc, pointing_game, relevance_mass, relevance_rank
from lit_attr.functional.mask_scores import attribution_localisation, top_k_intersection
from lit_attr.functional.monotonicity import monotonicity, monotonicity_correlation
from lit_attr.functional.mprt import discrete_entropy, entropy_rise, noisy_copies
from lit_attr.functional.perturbation import (
    auc,
    blur,
    iter_perturbed_batches,
    make_substrate,
    perturbation_schedule,
    rank_map,
    rise_blur_kernel,
)
from lit_attr.functional.protocol import PRESETS, resolve_protocol
from lit_attr.functional.randomization import (
    iter_randomized,
    randomizable_layers,
    randomization_stages,
    randomize_,
    sort_in_forward_order,
)
from lit_attr.functional.regions import irof, region_perturbation, selectivity
from lit_attr.functional.road import ROADResult, noisy_linear_imputation, road
from lit_attr.functional.robustness import avg_sensitivity, continuity, local_lipschitz
from lit_attr.functional.similarity import spearman, ssim_maps
from lit_attr.functional.stability import relative_stability
from lit_attr.functional.token_activation_deviation import token_activation_deviation
from lit_attr.functional.token_games import token_insertion_deletion
from lit_attr.functional.token_localization import token_auprc, token_f1, token_iou

__all__ = [
    "PRESETS",
    "ROADResult",
    "ActivationDeviationResult",
    "activation_deviation",
    "attribution_localisation",
    "resolve_probe_layers",
    "InsertionDeletionResult",
    "auc",
    "avg_sensitivity",
    "blur",
    "completeness",
    "completeness_error",
    "complexity",
    "effective_complexity",
    "discrete_entropy",
    "entropy_rise",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "focus",
    "comprehensiveness",
    "consistency",
    "continuity",
    "input_invariance",
    "insertion_deletion",
    "irof",
    "iter_perturbed_batches",
    "iter_randomized",
    "local_lipschitz",
    "localization_auroc",
    "make_substrate",
    "monotonicity",
    "monotonicity_correlation",
    "noisy_copies",
    "non_sensitivity",
    "noisy_linear_imputation",
    "perturbation_schedule",
    "pointing_game",
    "random_logit",
    "randomizable_layers",
    "randomization_stages",
    "randomize_",
    "region_perturbation",
    "rank_map",
    "relevance_mass",
    "relevance_rank",
    "relative_stability",
    "resolve_protocol",
    "road",
    "rise_blur_kernel",
    "selectivity",
    "sensitivity_n",
    "sort_in_forward_order",
    "sparseness",
    "spearman",
    "ssim_maps",
    "sufficiency",
    "sufficiency_dasgupta",
    "token_activation_deviation",
    "token_auprc",
    "token_f1",
    "token_insertion_deletion",
    "token_iou",
    "top_k_intersection",
]
