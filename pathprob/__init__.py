"""pathprob: a language model as a probability distribution over paths, measured."""

__version__ = "0.1.0"

from pathprob.analysis.ablate import Ablation, ablate
from pathprob.analysis.compare import Comparison, compare
from pathprob.analysis.concept_test import ConceptTest, concept_test
from pathprob.analysis.dynamics import Dynamics, training_dynamics
from pathprob.analysis.narrowing import NarrowingCurve, narrowing_curve
from pathprob.analysis.walk import Geometry, Walk, geometry, walk
from pathprob.config import ModelConfig, TrainConfig
from pathprob.data.languages import get_language
from pathprob.data.tokenizer import Tokenizer
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
from pathprob.paths.enumerate import Budget, enumerate_paths, top_k
from pathprob.paths.many import enumerate_many
from pathprob.paths.measure import entropy, mass
from pathprob.paths.results import Estimate, PathTable
from pathprob.paths.sample import Samples, sample
from pathprob.paths.score import score
from pathprob.paths.sets import PathSet, Predicate, Regex
from pathprob.training import train

__all__ = [
                             "Ablation",
                             "BadPromptError",
                             "Budget",
                             "BudgetExceededError",
                             "CheckpointError",
                             "Comparison",
                             "ConceptTest",
                             "Dynamics",
                             "Estimate",
                             "Geometry",
                             "LanguageModel",
                             "ModelConfig",
                             "NarrowingCurve",
                             "PathSet",
                             "PathTable",
                             "PathprobError",
                             "Predicate",
                             "Regex",
                             "Samples",
                             "State",
                             "Tokenizer",
                             "TrainConfig",
                             "TrainingError",
                             "Transformer",
                             "TransformerLM",
                             "UnknownSpecError",
                             "Walk",
                             "ablate",
                             "compare",
                             "concept_test",
                             "describe_model",
                             "entropy",
                             "enumerate_many",
                             "enumerate_paths",
                             "geometry",
                             "get_language",
                             "kl",
                             "mass",
                             "narrowing_curve",
                             "open_model",
                             "sample",
                             "score",
                             "top_k",
                             "train",
                             "training_dynamics",
                             "walk",
]
