"""Entry point: parse, check, run a command; exit codes 0 done, 1 failed, 2 bad arguments."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from vgcore.cli._common import Failure, UsageError
from vgcore.cli.outputs import _check_options, _check_outputs
from vgcore.cli.parser import COMMANDS, _validate, build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            import vgcore

            print(vgcore.__version__)
            return 0
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            raise UsageError("a command is required (see 'vgcore --help')")
        _validate(args)
        _check_options(args)
        _check_outputs(args)
        return int(COMMANDS[args.command](args))
    except UsageError as exc:
        print(f"vgcore: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print("vgcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'vgcore ... | head': the reader left, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout is not a real file
            pass
        return 141
    except (Failure, ImportError) as exc:
        print(f"vgcore: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"vgcore: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
