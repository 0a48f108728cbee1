"""One exception family for everything a user can get wrong.

The CLI turns any ``PathprobError`` into one line on stderr and exit status 2.
"""


class PathprobError(ValueError):
    """Base class: a problem with the user's input, named in the message."""


class BadPromptError(PathprobError):
    """The prompt cannot be encoded or does not fit the model."""


class UnknownSpecError(PathprobError):
    """A model spec, language name or path-set name that does not exist."""


class CheckpointError(PathprobError):
    """A checkpoint is missing, corrupt, or incompatible with the request."""


class BudgetExceededError(PathprobError):
    """A job would need more nodes or memory than its budget allows."""


class TrainingError(PathprobError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""
