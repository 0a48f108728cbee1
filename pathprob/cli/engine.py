"""Commands that run one engine call: info, score, enumerate, topk, mass, entropy, sample, kl."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import pathprob as pp
from pathprob import distributed
from pathprob.cli.common import (
    ChunkProgress,
    Devices,
    Dtype,
    JsonOut,
    LevelProgress,
    MaxNew,
    MaxPaths,
    MinProb,
    Progress,
    Prompt,
    Samples,
    Seed,
    Spec,
    command,
    emit_json,
    finish_estimate,
    finite,
    mc_options,
    out,
    print_paths,
)
from pathprob.devices import using as on_devices
from pathprob.files import dumps
from pathprob.paths.montecarlo import ENTROPY_METHODS, MASS_METHODS, METHODS
from pathprob.paths.proposal import Proposal
from pathprob.paths.sample import draw_blocks
from pathprob.paths.samples import Samples as SampleSet


def _join(json_out: Path | None) -> Path | None:
    """Join the distributed job the environment names (``PATHPROB_COORDINATOR``), before any JAX work;
    returns where to write the JSON result: nowhere but stdout on a process other than 0."""
    distributed.initialize_from_env()
    return json_out if json_out is None or str(json_out) == "-" else distributed.primary_only(json_out)


@command
def info(spec: Spec, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         dtype: Dtype = None):
    """Describe a model: family or config, step, parameter count, weight dtype and memory, eval loss."""
    facts = pp.describe_model(spec, dtype=dtype)
    if as_json:
        print(dumps(facts, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        table.add_row(key, dumps(value) if isinstance(value, (dict, list)) else str(value))
    out.print(table)


@command
def score(
    spec: Spec,
    prompt: Annotated[str, typer.Option(help="Prompt text (BOS is added when missing).")],
    continuation: Annotated[list[str], typer.Option(help="Continuation text; repeat for several.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    dtype: Dtype = None,
):
    """log P(continuation | prompt) for each continuation."""
    lm = pp.open_model(spec, dtype=dtype)
    logps = pp.score(lm, prompt, continuation)
    if as_json:
        print(dumps([{"continuation": c, "logp": float(lp)} for c, lp in zip(continuation, logps)], indent=2))
        return
    table = Table("continuation", "log p (nats)", "p")
    for c, lp in zip(continuation, logps):
        table.add_row(repr(c), f"{lp:.6f}", f"{math.exp(lp):.6g}")
    out.print(table)



@command(name="enumerate")
def enumerate_(
    spec: Spec, prompt: Prompt, max_new: MaxNew, min_prob: MinProb = 0.0, max_paths: MaxPaths = None,
    show: Annotated[int, typer.Option(min=0, help="Rows to print.")] = 30, json_out: JsonOut = None,
    dtype: Dtype = None, devices: Devices = None,
):
    """List every path above --min-prob with its exact probability, and the certified remainder."""
    json_out = _join(json_out)
    lm = pp.open_model(spec, dtype=dtype)
    with LevelProgress(max_new) as progress:
        table = pp.enumerate_paths(lm, prompt, max_new, min_prob=min_prob, max_paths=max_paths, on_level=progress,
                                   devices=devices)
    if emit_json(json_out, table.to_dict()) and str(json_out) == "-":
        return
    print_paths(table, f"{len(table):,} paths after {prompt!r}", show)


@command
def topk(spec: Spec, prompt: Prompt, max_new: MaxNew,
         k: Annotated[int, typer.Option("-k", min=1, help="How many paths.")] = 10, json_out: JsonOut = None,
         dtype: Dtype = None, devices: Devices = None):
    """The exact k most probable paths (best-first search with a certificate)."""
    json_out = _join(json_out)
    lm = pp.open_model(spec, dtype=dtype)
    table = pp.top_k(lm, prompt, k, max_new, devices=devices)
    if emit_json(json_out, table.to_dict()) and str(json_out) == "-":
        return
    print_paths(table, f"top {k} paths after {prompt!r}")
    out.print(f"certificate: best unexpanded prefix p = {math.exp(table.stats['log_best_unexpanded']):.6g} "
              f"<= p of path {len(table)}")



@command
def mass(spec: Spec, prompt: Prompt, max_new: MaxNew,
         regex: Annotated[str, typer.Option(help="Full-match regular expression over the continuation text.")],
         method: Annotated[str, typer.Option(help=", ".join(("exact",) + MASS_METHODS))] = "exact",
         n: Samples = 10_000, seed: Seed = 0,
         min_prob: MinProb = 0.0, max_paths: MaxPaths = None, json_out: JsonOut = None, dtype: Dtype = None,
         devices: Devices = None):
    """P(continuation matches REGEX | prompt): exact with proven bounds, or Monte Carlo with an interval."""
    json_out = _join(json_out)
    lm = pp.open_model(spec, dtype=dtype)
    pathset = pp.Regex(regex)
    with ChunkProgress(n) as progress:
        est = pp.mass(lm, prompt, pathset, max_new, method=method, min_prob=min_prob, max_paths=max_paths,
                      devices=devices, **mc_options(method, n, seed, progress))
    finish_estimate(f"P({regex!r})", est, json_out, requested=n)


@command
def entropy(spec: Spec, prompt: Prompt, max_new: MaxNew,
            method: Annotated[str, typer.Option(help=", ".join(("exact",) + ENTROPY_METHODS))] = "exact",
            n: Samples = 10_000, seed: Seed = 0,
            estimator: Annotated[str, typer.Option(help="mc: chain (Rao-Blackwellised) or plain")] = "chain",
            min_prob: MinProb = 0.0, max_paths: MaxPaths = None, json_out: JsonOut = None,
            dtype: Dtype = None, devices: Devices = None):
    """Entropy of the path distribution (nats): exact with proven bounds, or Monte Carlo with an interval."""
    json_out = _join(json_out)
    lm = pp.open_model(spec, dtype=dtype)
    with ChunkProgress(n) as progress:
        options = mc_options(method, n, seed, progress)
        if method in ENTROPY_METHODS and "estimator" in METHODS[method].entropy_options:
            options["estimator"] = estimator
        est = pp.entropy(lm, prompt, max_new, method=method, min_prob=min_prob, max_paths=max_paths, devices=devices,
                         **options)
    finish_estimate("H", est, json_out, requested=n, unit=" nats",
                    note=f"effective number of paths exp(H) = {math.exp(est.value):.4g}")


@command
def sample(spec: Spec, prompt: Prompt, max_new: MaxNew, n: Samples = 1000, seed: Seed = 0,
           temperature: Annotated[float, typer.Option(parser=finite(0.0), help="Sampling temperature.")] = 1.0,
           top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample among the k best tokens.")] = None,
           top_p: Annotated[float | None, typer.Option("--top-p", parser=finite(0.0, 1.0),
                                                          help="Nucleus sampling.")] = None,
           show: Annotated[int, typer.Option(min=0, help="Distinct paths to print.")] = 20, json_out: JsonOut = None,
           dtype: Dtype = None, devices: Devices = None):
    """Sample paths; print the most frequent with counts and model probabilities."""
    json_out = _join(json_out)
    lm = pp.open_model(spec, dtype=dtype)
    # pp.sample(..., distinct=True) in blocks of draws (counts down the trie), with progress between blocks:
    # the cost follows the distinct prefixes, so n = 10^9 takes seconds when the model repeats itself.
    drawn, parts = Proposal(temperature=temperature, top_k=top_k, top_p=top_p), []
    with Progress("samples", n) as progress, on_devices(devices):
        for part in draw_blocks(lm, prompt, n, max_new, key=seed, proposal=drawn):
            parts.append(part)
            progress.update(sum(map(len, parts)), "")
    samples = SampleSet.concatenate(parts)
    if emit_json(json_out, samples.to_dict()) and str(json_out) == "-":
        return
    table = Table("#", "path", "count", "frequency", "p model", title=f"{n:,} samples after {prompt!r} (seed {seed})",
                  title_justify="left")
    counts = samples.counts()
    for i, (path, count, lp) in enumerate(counts[:show], 1):
        table.add_row(str(i), repr(lm.tokenizer.decode(list(path))), f"{count:,}", f"{count / n:.4f}",
                      f"{math.exp(lp):.4g}")
    out.print(table)
    out.print(f"{len(counts):,} distinct paths")


@command
def kl(spec: Spec, prompt: Prompt, max_new: MaxNew,
       prompt_b: Annotated[str | None, typer.Option("--prompt-b", help="Prompt of b (default: --prompt).")] = None,
       model_b: Annotated[str | None, typer.Option("--model-b", help="Model spec of b (default: SPEC).")] = None,
       method: Annotated[str, typer.Option(help="exact or mc")] = "exact",
       n: Samples = 10_000, seed: Seed = 0, json_out: JsonOut = None, dtype: Dtype = None,
       devices: Devices = None):
    """KL(a || b) between two path distributions (two prompts and/or two models), in nats."""
    json_out = _join(json_out)
    lm_a = pp.open_model(spec, dtype=dtype)
    lm_b = lm_a if model_b is None else pp.open_model(model_b, dtype=dtype)
    with ChunkProgress(n) as progress:
        est = pp.kl(lm_a, prompt, lm_b, prompt if prompt_b is None else prompt_b, max_new, method=method,
                    devices=devices, **mc_options(method, n, seed, progress))
    finish_estimate("KL(a || b)", est, json_out, requested=n, unit=" nats")
