"""The user commands and their documentation agree.

- Every `stac-*` console script of the workspace has a parser here (a new command cannot slip
  past), every option of every (sub)command says what it does in its help, and the help
  renders (argparse formats help lazily: a stray '%' only fails when a user asks for help).
- Every invocation of a user command that the documentation shows (README.md, docs/*.md, the
  packages' READMEs: code spans and code-block lines) is accepted by today's parser, so a
  renamed or removed option fails here instead of in a user's shell.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

import pytest

from conftest import REPO_ROOT


def _bench_parser() -> argparse.ArgumentParser:
    from stac_eval.bench import available_benchmarks, build_parser

    return build_parser(available_benchmarks())


def _module_parser(module: str):
    return lambda: importlib.import_module(module).build_parser()


PARSERS = {
    "stac-bench": _bench_parser,
    "stac-demo": _module_parser("stac_eval.ros.demo"),
    "stac-calibrate": _module_parser("stac_eval.calibrate"),
    "stac-quantize": _module_parser("stac_eval.quantize"),
    "stac-replay": _module_parser("stac_eval.replay.cli"),
    "stac-record": _module_parser("stac_eval.ros.recorder_node"),
    "stac-train": _module_parser("stac_training.train"),
}
DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/*.md"), *REPO_ROOT.glob("stac_*/README.md")]
)
_CODE_SPAN = re.compile(r"`(stac-[a-z]+\b[^`]*)`")
_CODE_LINE = re.compile(r"^\s*(stac-[a-z]+\b.*)$")


def _console_scripts() -> set[str]:
    names = set()
    for setup in REPO_ROOT.glob("stac_*/setup.py"):
        names.update(re.findall(r'"(stac-[\w-]+)\s*=', setup.read_text()))
    return names


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def documented_invocations() -> list[tuple[str, str]]:
    """(where, command line) of every user command the documents show with arguments."""
    found = []
    for path in DOCUMENTS:
        in_code_block = False
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                in_code_block = not in_code_block
                continue
            if in_code_block:
                match = _CODE_LINE.match(line)
                text = match.group(1) if match else ""
                following = number
                while text.endswith("\\") and following < len(lines):  # continued lines
                    text = text[:-1] + " " + lines[following].strip()
                    following += 1
                candidates = [text] if text else []
            else:
                candidates = _CODE_SPAN.findall(line)
            where = f"{path.relative_to(REPO_ROOT)}:{number}"
            found += [(where, text) for text in candidates if _is_invocation(text)]
    return found


def _is_invocation(text: str) -> bool:
    """A command with options; a bare name (`stac-bench faults`) names it, runs nothing."""
    words = text.split()
    return words[0] in PARSERS and any(word.lstrip("[").startswith("-") for word in words)


def command_words(text: str) -> list[str]:
    """A documented command line as argv: comments dropped, optional parts in brackets kept,
    alternatives (`A\\|B` in tables, `A|B`) the first one, '...' an elided value after an
    option and elided arguments elsewhere."""
    text = text.split("#", 1)[0].replace("\\|", "|")
    words = []
    for word in shlex.split(text):
        word = word.strip("[]")
        if word == "..." and not words[-1].startswith("-"):
            continue
        if word:
            words.append(word if word.startswith("-") else word.split("|", 1)[0])
    return words


def test_every_user_command_has_a_parser_here():
    from stac_eval.bench import BENCHMARKS, available_benchmarks

    assert set(PARSERS) == _console_scripts()
    assert set(available_benchmarks()) == set(BENCHMARKS)  # every benchmark's module imports


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_is_described_and_help_renders(command):
    undescribed = []
    for parser in _all_parsers(PARSERS[command]()):
        assert parser.format_help()
        for action in parser._actions:
            if action.option_strings and not action.help and action.dest != "help":
                undescribed.append(f"{parser.prog} {'/'.join(action.option_strings)}")
    assert not undescribed, f"options without a help text: {undescribed}"


def test_the_documents_show_the_commands_with_arguments():
    shown = {text.split()[0] for _, text in documented_invocations()}
    assert {"stac-bench", "stac-demo", "stac-record", "stac-train", "stac-replay"} <= shown


@pytest.mark.parametrize(
    "where, text", documented_invocations(), ids=[w for w, _ in documented_invocations()]
)
def test_every_documented_invocation_parses(where, text):
    words = command_words(text)
    parser = PARSERS[words[0]]()
    try:
        parser.parse_args(words[1:])
    except SystemExit as error:
        assert error.code == 0, f"{where}: `{text}` is refused by {words[0]}'s parser"


@pytest.mark.parametrize(
    "text, error",
    [
        ("stac-train --iterations 3000 --no-such-option", "no-such-option"),
        ("stac-bench faults", "--out"),  # a required option left out
        ("stac-demo --mode sideways", "sideways"),
    ],
)
def test_a_wrong_invocation_is_refused(text, error, capsys):
    words = command_words(text)
    with pytest.raises(SystemExit) as refused:
        PARSERS[words[0]]().parse_args(words[1:])
    assert refused.value.code == 2 and error in capsys.readouterr().err


def test_one_benchmark_parses_without_importing_the_others():
    """`stac-bench gpu` runs on a GPU machine that has no ROS: choosing one benchmark imports
    that benchmark's module alone (the ROS benchmarks' modules import rclpy)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class NoRos:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'rclpy':\n"
        "            raise ImportError('no ROS on this machine')\n"
        "sys.meta_path.insert(0, NoRos())\n"
        "from stac_eval.bench import available_benchmarks, build_parser\n"
        "args = build_parser(available_benchmarks(), 'gpu').parse_args(['gpu', '--out', 'x'])\n"
        "assert args.device == 'cuda' and 'rclpy' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
