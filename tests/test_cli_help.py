"""Every command's --help: each flag has a help line that states its real default once."""
import argparse
import importlib
import re

import pytest

COMMANDS = ["audioset", "label", "prepare", "tag", "tag_over_time", "export", "complexity", "fbank_stats"]


def _parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"efficient_tagging.cli.{name}")
    if hasattr(module, "build_parser"):
        return module.build_parser()
    parsers = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):  # commands that build their parser inside main()
        parsers.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            module.main(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = original
    return parsers[0]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_explains_itself_and_its_default(name):
    parser = _parser(name)
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        text = formatter._get_help_string(action) % {**vars(action), "default": action.default,
                                                      "prog": parser.prog}
        if not action.help:
            problems.append(f"{flag}: no help")
            continue
        if text.lower().count("(default") > 1:
            problems.append(f"{flag}: default given twice: {text!r}")
        meaningful = action.default not in (None, False, argparse.SUPPRESS)
        if meaningful and "default" not in text.lower():
            problems.append(f"{flag}: default {action.default!r} not shown")
        if re.search(r"audioset: \d", text.lower()):
            problems.append(f"{flag}: 'AudioSet: N' hint instead of the real default: {text!r}")
    assert not problems, "\n".join(problems)
