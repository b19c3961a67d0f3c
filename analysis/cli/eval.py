"""`dynaprune eval`: perplexity of a trained (or pruned) model on a corpus split.

    dynaprune eval runs/ptb-small --split test
    dynaprune eval runs/ptb-small/best.pt --split valid --data ptb:/moved/ptb --json

The corpus the model was trained on is remembered in the checkpoint; --data is only needed when
it moved. With --json the last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json

from analysis.errors import InvalidInputError
from analysis.lm.evaluation import EVAL_BATCH_SIZE, EVAL_BPTT

HELP = "Compute a model's perplexity on the valid or test split of its corpus."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run directory (its best model) or a checkpoint file")
    parser.add_argument("--split", choices=["valid", "test"], default="valid", help="split to score (default valid)")
    parser.add_argument("--data", help="corpus spec, when the one recorded in the checkpoint moved or is missing")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"evaluation batch size (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--bptt", type=int, default=EVAL_BPTT, help=f"evaluation window length (default {EVAL_BPTT})")
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line")


def run(args: argparse.Namespace) -> int:
    from analysis.lm.corpora import load_corpus
    from analysis.lm.evaluation import evaluate, perplexity
    from analysis.lm.model import load_model

    model, info = load_model(args.model)
    spec = args.data or info.get("data_source")
    if not spec:
        raise InvalidInputError(f"{info['path']} does not record its corpus; pass --data SPEC "
                                f"(ptb:<dir>, text:<dir> or synthetic:<seed>)")
    try:
        corpus = load_corpus(spec)
    except (InvalidInputError, OSError) as error:
        hint = "" if args.data else f" The model was trained on {spec!r}; pass --data SPEC if the corpus moved."
        raise InvalidInputError(f"cannot load the corpus for {info['path']}: {error}.{hint}") from error
    corpus.check_vocabulary(info["path"], model.config.vocab_size, info.get("vocab"))
    mean_nll, tokens = evaluate(model, corpus.split(args.split), args.batch_size, args.bptt)
    result = {"perplexity": perplexity(mean_nll), "mean_nll": mean_nll, "split": args.split, "tokens": tokens,
              "oracle_perplexity": corpus.oracle_perplexity(args.split), "data": corpus.source,
              "model": info["path"], "hidden_sizes": model.config.hidden_sizes}
    line = f"{args.split} perplexity {result['perplexity']:.2f} over {tokens} tokens of {corpus.source}"
    if result["oracle_perplexity"] is not None:
        line += f" (oracle {result['oracle_perplexity']:.2f})"
    print(line)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
