"""The command line every program here shares.

Flags are matched exactly (argparse would take `--trainable-scope` for `--trainable-scopes`),
a misspelt flag is answered with the nearest real one, an error is one line rather than the
usage block, and every flag's help shows its default once.
"""
import argparse
import difflib


class HelpFormatter(argparse.HelpFormatter):
    """Help with `(default: X)` after every flag that has a default worth saying."""

    def _get_help_string(self, action):
        text = action.help or ''
        if ('(default' in text or not action.option_strings or action.default is None
                or action.default is False or action.default in ('', argparse.SUPPRESS)):
            return text
        return (text + ' ' if text else '') + '(default: %(default)s)'


class ArgumentParser(argparse.ArgumentParser):
    """argparse with exact flags, one-line errors and "did you mean" for a misspelt flag."""

    def __init__(self, **kwargs):
        kwargs.update(allow_abbrev=False)
        kwargs.setdefault('formatter_class', HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        prefix = 'unrecognized arguments: '
        if message.startswith(prefix):
            message = '; '.join(self.unknown(arg) for arg in message[len(prefix):].split()
                                if arg.startswith('-')) or message
        self.exit(2, '%s: error: %s\n' % (self.prog, message))

    def unknown(self, flag):
        """'no flag --datset: did you mean --dataset?', or where none is near, where to look."""
        near = difflib.get_close_matches(flag.split('=')[0], self._option_string_actions, n=1)
        return 'no flag %s' % flag + (': did you mean %s?' % near[0] if near else
                                      ' (%s -h lists the flags)' % self.prog)


def comma_list(text):
    """The items of a comma-separated flag: 'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(',') if item.strip()]
