"""A benchmark's command line as its saved note shows it: the results under bench/results/ are committed,
so they name no path of the machine that measured them."""

from __future__ import annotations

from pathlib import Path

# The variable that holds the MAML++ reference code's directory (a clone of
# github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch), named in place of that directory.
REFERENCE_VARIABLE = "$METAPLUS_MAMLPP_REFERENCE"


def public_command(argv: list[str], reference_code: str | Path | None) -> list[str]:
    """``argv`` as the saved note shows it: the reference code's directory is this machine's path, so
    the note names the variable that holds it instead; ``--note``'s text follows the command in full,
    so it is left out here."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--note"):
            skip = arg == "--note"
            continue
        if reference_code is not None and arg == str(reference_code):
            arg = REFERENCE_VARIABLE
        elif arg.startswith("--reference-code="):
            arg = f"--reference-code={REFERENCE_VARIABLE}"
        out.append(arg)
    if reference_code is not None and not any(a.startswith("--reference-code") for a in argv):
        out.append(f"(reference code from {REFERENCE_VARIABLE})")
    return out
