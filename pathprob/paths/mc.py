"""Plain Monte Carlo: the mass of a set and the path entropy from n i.i.d. draws, made as counts.

The n draws come from ``sample.draw_blocks``: a few count-based draws down the prefix
trie, so the cost follows the number of distinct prefixes, not n (10^9 draws are
practical when the model repeats itself). Each block is one chunk for progress and
Ctrl-C. The mass is hits/n with the exact binomial (Clopper-Pearson) interval; the
entropy is the mean of the per-draw chain-rule sums (``chain``) or of -log p(x)
(``plain``) with a normal interval inside [0, log #paths].
"""

from __future__ import annotations

import math


from pathprob.errors import PathprobError
from pathprob.paths.intervals import Moments, clip, clopper_pearson, normal_interval, widen
from pathprob.paths.results import Estimate
from pathprob.paths.running import Method, Run, fold_chunks
from pathprob.paths.sample import draw_blocks
from pathprob.paths.samples import contains
from pathprob.paths.swor import log_num_paths

ENTROPY_ESTIMATORS = ("chain", "plain")


def mc_mass(lm, prompt, pathset, max_new, *, n, key, level, chunk, on_chunk) -> Estimate:
    """hits/n, each distinct sampled path counted as often as it was drawn."""
    key, run = Run.start(key)

    def estimate(counts: tuple[int, int]) -> Estimate:
        hits, done = counts
        p = hits / done
        return run.estimate("mc", p, clopper_pearson(hits, done, level), n=done, level=level,
                            stderr=math.sqrt(p * (1 - p) / done), ess=float(done), hits=hits,
                            details={"hits": hits, "interval": "Clopper-Pearson (exact binomial)"})

    def fold(counts, part):
        inside = contains(pathset, part.tokens, part.lengths, part.tokenizer)
        return counts[0] + int(part.weights[inside].sum()), counts[1] + len(part)

    parts = draw_blocks(lm, prompt, n, max_new, key=key, chunk=chunk)
    return fold_chunks(parts, fold, (0, 0), estimate, total=n, on_chunk=on_chunk)


def mc_entropy(lm, prompt, max_new, *, n, key, level, chunk, on_chunk, estimator: str = "chain") -> Estimate:
    """The mean over draws of sum_t H(p(. | x_<t)) (``chain``: lower variance) or of -log p(x) (``plain``)."""
    if estimator not in ENTROPY_ESTIMATORS:
        raise PathprobError(f"unknown entropy estimator {estimator!r}; choose one of {', '.join(ENTROPY_ESTIMATORS)}")
    key, run = Run.start(key)
    bounds = (0.0, log_num_paths(lm.vocab_size, max_new))

    def estimate(values: Moments) -> Estimate:
        interval = clip(widen(normal_interval(values.mean, values.stderr, level), max_new, absolute=True), *bounds)
        return run.estimate("mc", values.mean, interval, n=values.n, level=level, stderr=values.stderr,
                            ess=float(values.n), details={"estimator": estimator,
                                                          "interval": "normal: mean ± z·sd/√n, within [0, log #paths]"})

    def fold(values: Moments, part) -> Moments:
        per_path = part.extras["entropy"] if estimator == "chain" else -part.logp
        return values.plus(per_path, part.weights)

    parts = draw_blocks(lm, prompt, n, max_new, key=key, chunk=chunk)
    return fold_chunks(parts, fold, Moments(), estimate, total=n, on_chunk=on_chunk)



METHOD = Method("mc", "i.i.d. draws (as counts); mass: exact binomial interval; entropy: normal interval",
                mass=mc_mass, entropy=mc_entropy, entropy_options=("estimator",))
