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
    "demo": ("mmrec.commands.demo", "run the main job on the embedded default"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
