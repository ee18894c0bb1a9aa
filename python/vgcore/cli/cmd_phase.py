"""`vgcore phase`: mean-field theory of a weight and bias scale."""

from __future__ import annotations

import argparse

from vgcore.cli._common import UsageError, _emit_json
from vgcore.cli.outputs import _save_figure

#: The theory's argument names and the 'phase' flags that set them (for error messages).
_PHASE_FLAGS = (
    ("sigma_w2", "--sigma-w2"),
    ("sigma_b2", "--sigma-b2"),
    ("activation", "--activation"),
)


def _cmd_phase(args: argparse.Namespace) -> int:
    from vgcore import _summaries

    try:  # every input of the theory is a flag: its ValueErrors are bad arguments
        res = _summaries.run_phase(
            args.activation, args.sigma_w2, args.sigma_b2, diagram=bool(args.plot)
        )
    except ValueError as exc:
        msg = str(exc)
        for name, flag in _PHASE_FLAGS:
            if msg.startswith(name + " "):
                msg = f"{flag}: {msg}"
        raise UsageError(msg) from None
    from vgcore.theory.scope import phase_scope_note  # what the phase is about

    if args.json:
        _emit_json({**res["json"], "scope": phase_scope_note()})
    else:
        print(res["text"] + "\n" + phase_scope_note())
    if args.plot:
        from vgcore import plotting

        point = None if args.sigma_w2 is None else (args.sigma_w2, args.sigma_b2)
        _save_figure(args, plotting.plot_phase_diagram(res["diagram"], point=point).figure)
    return 0
