"""The ``pathprob`` command line: each command is one API call plus printing.

Commands live by concern in ``engine`` (one engine call each), ``analysis`` and
``runs``; ``common`` holds the app, the error wrapper, option types and printing.
"""

from pathprob.cli import engine, analysis, runs  # noqa: F401, I001 - importing registers the commands, in this order
from pathprob.cli.common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
