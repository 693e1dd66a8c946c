"""Generation: batched ``generate`` with per-token raw-logit entropies, and the generation evaluation
(metrics on fixed prompts) that the Lightning and ``transformers`` callbacks share. No Lightning here;
may import ``models`` and ``metrics``.
"""

from entropy_reg.generation.decode import (
    DECODING_PRESETS,
    DecodingConfig,
    GenerationResult,
    generate_with_entropy,
    parse_decoding,
)
from entropy_reg.generation.evaluation import DEFAULT_PROMPTS, GenerationEvaluator

__all__ = [
    "DEFAULT_PROMPTS",
    "DECODING_PRESETS",
    "DecodingConfig",
    "GenerationEvaluator",
    "GenerationResult",
    "generate_with_entropy",
    "parse_decoding",
]
