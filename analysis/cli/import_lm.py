"""`dynaprune import`: turn a folder of a word language model's state dicts, saved during training
by another script, into a dynaprune run directory (model, description, vocabulary, trajectory) that
`dynaprune eval`, `dynaprune prune` and the dashboard read.

    dynaprune import my_checkpoints --data text:my_corpus --out runs/mine
    dynaprune import my_checkpoints --data ptb:/path/to/ptb --out runs/mine --checkpoint 12000 --lr 20

The model is pytorch/examples word_language_model's shape: an embedding, one nn.LSTM / nn.GRU /
nn.RNN stack and a linear decoder, tied or not. --data is the corpus it was trained on; the
training settings (--lr, --bptt, ...) are what a later `dynaprune prune` fine-tunes with
(default: the examples' own). With --json the last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json

HELP = "Import a word language model from a folder of its state dicts (saved by step) as a dynaprune run."
# Settings only a pruning stage or a dry run uses, or that describe recording: nothing to say about an import.
NOT_IMPORT_SETTINGS = ("distill_alpha", "distill_temperature", "teacher_precision", "record_every", "record_dtype",
                       "log_interval", "max_batches_per_epoch", "max_eval_batches")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis.lm.importing import EXAMPLES_DROPOUT, EXAMPLES_TRAINING
    from analysis.lm.training_config import TrainConfig
    from analysis.utils.options import add_config_arguments

    parser.add_argument("folder", help="folder of state dicts named by step (step_100.pt, ...; .pt, .pth or "
                                       ".safetensors), read without running code")
    parser.add_argument("--data", required=True, help="the corpus the model was trained on: ptb:<dir>, ptb, "
                                                      "text:<dir> or synthetic:<seed>")
    parser.add_argument("--out", required=True, help="the run directory to create")
    parser.add_argument("--checkpoint", help="the model to import: a step number, a file name in the folder or a "
                                             "path (default: the last checkpoint by step)")
    parser.add_argument("--dropout", type=float, default=EXAMPLES_DROPOUT,
                        help=f"dropout of the model when fine-tuned (default {EXAMPLES_DROPOUT}, the examples')")
    add_config_arguments(parser, TrainConfig, skip=NOT_IMPORT_SETTINGS, default_note="default: see below")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (only the files a run writes)")
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line")
    examples = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in EXAMPLES_TRAINING.items())
    parser.epilog = (f"The training settings say how the model was trained; dynaprune prune fine-tunes the import "
                     f"with them. Defaults: pytorch/examples word_language_model's ({examples}), dynaprune's for "
                     f"the rest. nn.RNN layers are taken to be tanh, nn.RNN's default.")


def run(args: argparse.Namespace) -> int:
    from analysis.lm.importing import EXAMPLES_TRAINING, import_language_model
    from analysis.lm.training_config import TrainConfig
    from analysis.utils.options import config_from_args

    train_config = config_from_args(args, TrainConfig, base=TrainConfig.from_dict(EXAMPLES_TRAINING)).validate()
    result = import_language_model(args.folder, data=args.data, out=args.out, checkpoint=args.checkpoint,
                                   train_config=train_config, dropout=args.dropout, overwrite=args.overwrite,
                                   log=lambda message: print(message, flush=True))
    if args.json:
        config = result.model.config
        print(json.dumps({"out": str(result.out_dir), "checkpoint": str(result.checkpoint), "step": result.step,
                          "snapshots": result.snapshots, "val_ppl": result.val_ppl, "rnn_type": config.rnn_type,
                          "hidden_sizes": config.hidden_sizes, "embedding_size": config.embedding_size,
                          "vocab_size": config.vocab_size, "tie_weights": config.tie_weights,
                          "max_difference": result.max_difference}, sort_keys=True))
    return 0
