"""Every command's --help says what it does, shows a worked example, and explains each option; every example is
a command line the parser accepts."""
import argparse
import shlex

import pytest

from microdit.cli import EXAMPLES, build_parser, commands_of


def all_commands(subparsers=None, path="") -> dict[str, argparse.ArgumentParser]:
    if subparsers is None:
        subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, (parser, _) in commands_of(subparsers).items():
        found[f"{path}{name}"] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update(all_commands(action, f"{path}{name} "))
    return found


COMMANDS = all_commands()


def test_every_command_and_only_those_have_an_example():
    assert sorted(EXAMPLES) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_a_description_an_example_and_help_for_every_option(command, capsys):
    parser = COMMANDS[command]
    assert parser.description and parser.epilog.startswith("example:")
    unexplained = [a.option_strings or a.dest for a in parser._actions
                   if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert unexplained == []
    with pytest.raises(SystemExit) as done:
        build_parser(command.split()[0]).parse_args([*command.split(), "--help"])
    assert done.value.code == 0 and f"example:\n  {EXAMPLES[command]}" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_example_is_a_command_line_the_parser_accepts(command):
    words = [w for w in shlex.split(EXAMPLES[command]) if "=" not in w or not w.split("=")[0].isupper()]  # env
    assert words[0] == "microdit"
    args = build_parser(words[1]).parse_args(words[1:])
    assert callable(args.func)
