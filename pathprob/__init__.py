"""pathprob: a language model as a probability distribution over paths, measured."""

__version__ = "0.1.0"

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
from pathprob.paths.enumerate import Budget, enumerate_paths, top_k
from pathprob.paths.measure import entropy, mass
from pathprob.paths.montecarlo import kl
from pathprob.paths.sample import Samples, sample
from pathprob.paths.results import Estimate, PathTable
from pathprob.paths.score import score
from pathprob.paths.sets import PathSet, Predicate, Regex
from pathprob.training import train

__all__ = [
    "Budget", "Estimate", "Samples", "kl", "sample", "PathSet", "PathTable", "Predicate", "Regex", "entropy", "enumerate_paths", "mass", "top_k",
    "BadPromptError", "BudgetExceededError", "CheckpointError", "LanguageModel", "ModelConfig", "PathprobError",
    "State", "Tokenizer", "TrainConfig", "TrainingError", "Transformer", "TransformerLM", "UnknownSpecError",
    "describe_model", "get_language", "open_model", "score", "train",
]
