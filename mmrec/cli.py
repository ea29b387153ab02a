"""The `mmrec` command: the composition root of the project.

Each subcommand lives in its own module (library commands under mmrec/commands/, streaming ones under
worker/) and is named here by module path; only this dispatcher may reach into worker/, so the rest
of mmrec never imports faust.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("mmrec.commands.extract", "extract and store CNN feature maps of images and videos"),
    "fit-projection": ("mmrec.commands.fit_projection", "fit the per-layer PCA channel projection (rebuilds the shipped default, or fits one on your media)"),
    "demo": ("worker.demo", "the streaming path end to end on the embedded default broker"),
    "demo-offline": ("mmrec.commands.demo_offline", "the model end to end on bundled media, without Kafka"),
    "schemas": ("mmrec.commands.schemas", "write or check the JSON Schemas of the topic messages"),
    "config-reference": ("mmrec.commands.config_reference", "write or check docs/configuration.md, the table of every MMREC_* setting"),
    "train": ("mmrec.commands.train", "fit the shared parts and every user's parameters from an interaction log"),
    "score": ("mmrec.commands.score", "write a trained model's scores as CSV user_id,media_id,score"),
    "evaluate": ("mmrec.commands.evaluate", "full-ranking offline (and prequential) evaluation of every registered ranker"),
    "compare": ("mmrec.commands.compare", "pool `mmrec evaluate --json` results of several data sets: NDCG@10 and paired differences"),
    "dataset": ("mmrec.commands.dataset", "generate a benchmark data set (dataset make visual-taste --out DIR)"),
    "bench": ("mmrec.commands.bench", "benchmarks: scoring, update, extract, stream, retrieval, or all (make bench)"),
    "worker": ("worker.main", "run a streaming worker against the configured Kafka cluster"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module_name, help_text = COMMANDS[argv[0]]
        module = importlib.import_module(module_name)  # only the command that runs is imported
        parser = argparse.ArgumentParser(prog=f"mmrec {argv[0]}", description=help_text)
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(argv[1:])) or 0)
    parser = argparse.ArgumentParser(prog="mmrec", description="mmrec: a streaming visual-taste recommender.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    parser.parse_args(argv)  # prints usage or the error for an unknown command
    return 2


if __name__ == "__main__":
    sys.exit(main())
