"""pathprob: a language model as a probability distribution over paths, measured."""

__version__ = "0.1.0"

from pathprob import devices, distributed
from pathprob.analysis.ablate import Ablation, ablate
from pathprob.analysis.compare import Comparison, compare
from pathprob.analysis.concept_test import ConceptTest, concept_test
from pathprob.analysis.dynamics import Dynamics, training_dynamics
from pathprob.analysis.narrowing import NarrowingCurve, narrowing_curve
from pathprob.analysis.walk import Geometry, Walk, geometry, walk
from pathprob.compile_cache import enable_compile_cache
from pathprob.config import ModelConfig, TrainConfig
from pathprob.data.hf_tokenizer import HFTokenizer
from pathprob.data.languages import get_language
from pathprob.data.tokenizer import CharTokenizer, Tokenizer
from pathprob.errors import (
                             BadPromptError,
                             BudgetExceededError,
                             CheckpointError,
                             PathprobError,
                             TrainingError,
                             UnknownSpecError,
)
from pathprob.loading import describe_model, open_model
from pathprob.models.base import LanguageModel, State
from pathprob.models.transformer import Transformer, TransformerLM
from pathprob.paths.divergence import kl
from pathprob.paths.enumerate import Budget, enumerate_many, enumerate_paths
from pathprob.paths.measure import entropy, mass
from pathprob.paths.results import Estimate, PathTable
from pathprob.paths.sample import sample
from pathprob.paths.samples import Samples
from pathprob.paths.score import score
from pathprob.paths.sets import PathSet, Predicate, Regex
from pathprob.paths.topk import top_k
from pathprob.training import train

__all__ = [
    "Ablation", "Comparison", "ConceptTest", "Dynamics", "Geometry", "NarrowingCurve", "Walk", "ablate", "compare",
    "concept_test", "enumerate_many", "geometry", "narrowing_curve", "training_dynamics", "walk",
    "Budget", "Estimate", "Samples", "kl", "sample", "PathSet", "PathTable", "Predicate", "Regex", "entropy", "enumerate_paths", "mass", "top_k",
    "BadPromptError", "BudgetExceededError", "CharTokenizer", "CheckpointError", "HFTokenizer", "LanguageModel",
    "ModelConfig", "PathprobError", "State", "Tokenizer", "TrainConfig", "TrainingError", "Transformer",
    "TransformerLM", "UnknownSpecError",
    "describe_model", "devices", "distributed", "enable_compile_cache", "get_language", "open_model", "score", "train",
]
