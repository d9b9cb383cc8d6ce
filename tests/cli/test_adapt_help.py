"""`finetune --adapt`'s help names the adaptation methods installed when it is shown
(zoo-adapt's own three and a plugin's), read from the plugins' declarations."""

from __future__ import annotations

import re

from zoo_adapt import hookimpl


class Extra:
    @hookimpl
    def register_adaptation_methods(self, register):
        register("coral", lambda **kw: None, "a third party's method")


def adapt_help(output: str) -> str:
    block = re.search(r"--adapt TEXT(.*?)\n  --", output, re.S)
    assert block, output
    return " ".join(block[1].split())


def test_adapt_help_lists_the_installed_methods(run_cli, plugin):
    text = adapt_help(run_cli("finetune", "--help").output)
    assert "adabn | dann | mcc" in text
    plugin(Extra(), "extra_methods")
    assert "adabn | coral | dann | mcc" in adapt_help(run_cli("finetune", "--help").output)
