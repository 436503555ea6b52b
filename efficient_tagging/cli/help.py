"""One `--help` style for every command: each flag's help states its real default exactly once."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" where the help does not say it.

    Unlike argparse's ArgumentDefaultsHelpFormatter it never repeats a default the help text
    already explains ("default: delete them") and never prints the meaningless "None"/"False"
    of optional values and switches.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"
