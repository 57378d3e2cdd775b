"""Every user command's --help renders (argparse formats help lazily: a stray '%' in a help
text only fails when a user asks for help)."""

from __future__ import annotations

import argparse
import importlib

import pytest

COMMANDS = {
    "stac-demo": "stac_eval.ros.demo",
    "stac-calibrate": "stac_eval.calibrate",
    "stac-replay": "stac_eval.replay.cli",
    "stac-train": "stac_training.train",
}


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_renders(command):
    parser = importlib.import_module(COMMANDS[command]).build_parser()
    for each in _all_parsers(parser):
        assert each.format_help()


def test_every_benchmark_help_renders():
    from stac_eval.bench import available_benchmarks, build_parser

    available = available_benchmarks()
    assert {"model", "codec", "spatial", "live", "faults"} <= set(available)
    for each in _all_parsers(build_parser(available)):
        assert each.format_help()
