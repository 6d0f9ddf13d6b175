"""The only reader of FLINTLM_* environment variables.

Every `flintlm serve` flag can also come from `FLINTLM_<FLAG_NAME>` (e.g. FLINTLM_MAX_MODEL_LEN);
the CLI asks this module and never reads `os.environ` itself. Values are returned as strings;
the caller converts them with the same rules as the flag. Four are not flags: FLINTLM_CPU_ISA
(`kernels/isa.py`), FLINTLM_TORCH_CAPS_APPLIED (written by flintlm itself: the torch caps it set
for that tier, so a child process can tell them from the user's), FLINTLM_FAULT_INJECT (tests
only: `engine/faults.py`) and the test hook FLINTLM_TEST_HOLD_LOADING_UNTIL=<file>, which keeps
`serve` in its loading phase until the file exists.
"""

from __future__ import annotations

import os

PREFIX = "FLINTLM_"


def var_name(name: str) -> str:
    """`max_model_len` -> `FLINTLM_MAX_MODEL_LEN`."""
    return PREFIX + name.upper().replace("-", "_")


def lookup(name: str) -> str | None:
    """The value of FLINTLM_<NAME>, or None when unset or empty."""
    value = os.environ.get(var_name(name), "").strip()
    return value or None


def store(name: str, value: str | None) -> None:
    """Set FLINTLM_<NAME> for this process and the processes it starts (None: remove it)."""
    if value is None:
        os.environ.pop(var_name(name), None)
    else:
        os.environ[var_name(name)] = value


def parse_bool(name: str, text: str) -> bool:
    """Read a boolean flag value ("1/0", "true/false", "yes/no", "on/off")."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{var_name(name)}={text!r} is not a boolean; use true or false")
