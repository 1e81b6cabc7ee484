"""Every command and subcommand answers ``--help``; the command names are pinned (an
end-to-end test and the README use them)."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

from proxy_router.cli import main
from proxy_router.cli.app import build_parser
from proxy_router.dev.anvil import dev_key

COMMANDS = [
    ["deploy"],
    ["provider", "register"], ["provider", "update"], ["provider", "deregister"],
    ["provider", "show"],
    ["model", "register"], ["model", "deregister"], ["model", "list"],
    ["bid", "post"], ["bid", "delete"], ["bid", "list"],
    ["session", "list"], ["session", "close"],
    ["earnings"],
    ["wallet", "new"], ["wallet", "import"], ["wallet", "address"], ["wallet", "balance"],
    ["wallet", "send"], ["wallet", "allowance"], ["wallet", "withdraw-held"],
]
READ_COMMANDS = [["provider", "show"], ["model", "list"], ["bid", "list"], ["session", "list"],
                 ["earnings"], ["wallet", "balance"], ["wallet", "allowance"]]


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                  ) -> list[list[str]]:
    found: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += leaf_commands(sub, (*path, name))
    return found or [list(path)]


def test_the_command_tree_is_exactly_the_documented_one():
    assert sorted(leaf_commands(build_parser())) == sorted(COMMANDS)


@pytest.mark.parametrize("argv", [[], *COMMANDS, ["provider"], ["model"], ["bid"], ["session"],
                                  ["wallet"]], ids=lambda a: " ".join(a) or "top")
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: proxy-router" + "".join(f" {a}" for a in argv))
    assert "--env-file" in out


def test_the_help_says_which_marketplace_flavour_each_difference_is_for(
        capsys: pytest.CaptureFixture[str]):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    top = help_of()
    assert "MARKETPLACE_FLAVOR" in top and "wallet withdraw-held" in top
    assert "native" in top and "morpheus" in top
    withdraw = help_of("wallet", "withdraw-held")
    assert "Morpheus flavour only" in withdraw and "native marketplace refunds" in withdraw
    for argv in (["session", "close"], ["earnings"], ["wallet", "balance"]):
        text = help_of(*argv)
        assert "native" in text or "morpheus" in text, argv
    assert "morpheus flavour only" in help_of("model", "register")
    assert "morpheus flavour" in help_of("deploy")


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=" ".join)
def test_read_commands_offer_json(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["provider"], ["wallet"], ["--role", "consumer", "deploy"],
                                  []], ids=lambda a: " ".join(a) or "nothing")
def test_an_incomplete_command_line_is_a_usage_error(argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_env_file_may_come_before_or_after_the_command():
    parser = build_parser()
    assert str(parser.parse_args(["--env-file", "a.env", "model", "list"]).env_file) == "a.env"
    assert str(parser.parse_args(["model", "list", "--env-file", "b.env"]).env_file) == "b.env"
    assert parser.parse_args(["model", "list"]).env_file is None


def test_the_installed_script_is_this_main():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.name == "proxy-router"]
    assert script.value == "proxy_router.cli:main" and script.load() is main


@pytest.mark.parametrize("extra", [["--private-key", "KEY"], ["--key", "KEY"], ["KEY"],
                                   ["--private-key=KEY"], ["--keystore", "k", "--to", "KEY"]],
                         ids=["option", "abbreviation", "positional", "option=", "unknown"])
def test_wallet_import_has_no_key_argument_and_never_echoes_one(
        extra: list[str], capsys: pytest.CaptureFixture[str]):
    key = dev_key(3)
    with pytest.raises(SystemExit) as done:
        main(["wallet", "import", "--keystore", "k.json",
              *[a.replace("KEY", key) for a in extra]])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert key[2:].lower() not in (captured.out + captured.err).lower()
