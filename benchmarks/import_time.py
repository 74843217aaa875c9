"""What the installed open_clip hook costs: fresh interpreters with and without it, in one run.

    python benchmarks/import_time.py               # 7 alternating rounds: about 3 minutes on 2 cores
    python benchmarks/import_time.py --rounds 3

Each line times a fresh ``python -c ...`` (wall clock, start to exit), a reference and a measured run
alternating in every round so that other work on the machine hurts both alike, and prints each one's
median, the ratio measured/reference and the difference:

- interpreter start and ``import open_clip``, with the hook switched off (``ALTCLIP_ADAPTERS_NO_AUTOLOAD=1``:
  open_clip alone) and on: what every process in the environment pays;
- ``import open_clip`` with the hook, then also the AltCLIP model class (the core, timm's ViT,
  transformers' XLM-R): what the first AltCLIP build adds, and what the registration cost when it
  imported the core;
- ``import torch`` against what every model-loading command imports before its model starts loading (the
  pipeline, the runtimes, the CLI): the fast start target is at most 1.3x.

Every run that asks reports whether AltCLIP got registered; the script fails if that disagrees with the hook's switch,
or if a run fails or writes to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REGISTERED = "import sys; print('AltCLIP' in sys.modules['open_clip'].list_models())"
CASES = [  # (line, (code, hook on?) of the reference, the same of the measured run)
    ("interpreter start, `python -c pass`: hook off / on", ("pass", False), ("pass", True)),
    (
        "`import open_clip`: hook off / on",
        (f"import open_clip; {REGISTERED}", False),
        (f"import open_clip; {REGISTERED}", True),
    ),
    (
        "hook on: `import open_clip` / + the AltCLIP model class (first build)",
        (f"import open_clip; {REGISTERED}", True),
        (f"import open_clip; import altclip_adapters.integrations.open_clip; {REGISTERED}", True),
    ),
    (  # issue 21.4: the target is <= 1.3x
        "what a command pays before its model loads: `import torch` / pipeline + runtimes + CLI",
        ("import torch", True),
        ("import altclip_adapters.inference.embedder, altclip_adapters.inference.runtimes, altclip_adapters.cli", True),
    ),
]


def run(python: str, code: str, hook: bool) -> tuple[float, str]:
    """(wall seconds, stdout) of a fresh interpreter running ``code``."""
    env = {**os.environ, "ALTCLIP_ADAPTERS_NO_AUTOLOAD": "0" if hook else "1"}
    start = time.perf_counter()
    result = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"{code!r} (hook {'on' if hook else 'off'}) failed or warned:\n{result.stderr[-3000:]}")
    return seconds, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per line (default: 7)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time (default: this one)")
    args = parser.parse_args()
    version = subprocess.run(
        [args.python, "-c", "import open_clip, torch; print(open_clip.__version__, torch.__version__)"],
        env={**os.environ, "ALTCLIP_ADAPTERS_NO_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    print(f"{args.python}: open_clip {version[0]}, torch {version[1]}; {args.rounds} alternating rounds, medians")
    for line, *pair in CASES:
        times: tuple[list[float], list[float]] = ([], [])
        for round_ in range(args.rounds):
            for which in (0, 1) if round_ % 2 == 0 else (1, 0):
                code, hook = pair[which]
                seconds, out = run(args.python, code, hook)
                if REGISTERED in code and out != str(hook):
                    raise SystemExit(f"AltCLIP registered: {out}, expected {hook} (hook {'on' if hook else 'off'})")
                times[which].append(seconds)
        reference, measured = (statistics.median(t) for t in times)
        print(
            f"{line}: {reference:.3f} s / {measured:.3f} s = {measured / reference:.2f}x, "
            f"{1000 * (measured - reference):+.0f} ms"
        )


if __name__ == "__main__":
    main()
