"""A gate for the one-writer tests (tests/faults/test_one_writer.py), in every Python process they start.

With this folder on PYTHONPATH and ``MIXER_TEST_GATE=<path>`` in the environment, a process that logs a
training step >= ``MIXER_TEST_GATE_STEP`` (default 2) writes ``<path>.reached.<pid>`` and then waits until
``<path>`` exists: it is training, holds its run directory, and stays there until the test lets it go.
That is how the tests hold a writer mid-run without sleeping. Any other process is unchanged.
"""

import os

if os.environ.get("MIXER_TEST_GATE"):
    try:
        import time
        from pathlib import Path

        from mixer_scaling import records

        _append = records.MetricsLog.append
        _gated = []

        def append(self, row):
            _append(self, row)
            if not _gated and "train/loss" in row and row["step"] >= int(os.environ.get("MIXER_TEST_GATE_STEP", 2)):
                _gated.append(row["step"])
                gate = Path(os.environ["MIXER_TEST_GATE"])
                gate.with_name(f"{gate.name}.reached.{os.getpid()}").write_text(str(self.path.parent))
                while not gate.exists():
                    time.sleep(0.01)

        records.MetricsLog.append = append
    except Exception as exc:  # never break an unrelated interpreter
        import sys

        print(f"test gate not installed: {exc}", file=sys.stderr)
