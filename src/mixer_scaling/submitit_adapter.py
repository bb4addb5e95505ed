"""The one place the project reaches into a library's private names: submitit's sbatch rendering.

A dry run shows, and a launch checks (sbatch's own parser, no line breaks), the sbatch script submitit
would submit for an array, before anything is submitted. submitit has no public way to render that script
without submitting it, so this module calls ``SlurmExecutor._make_submission_file_text`` on the
executor an ``AutoExecutor`` wraps. submitit is pinned (``constraints.txt``: :data:`PINNED`), and
``tests/test_submitit_adapter.py`` fails with a message naming this module when an upgrade changes what
these names do.
"""

from __future__ import annotations

import submitit

PINNED = "1.5.4"


def sbatch_script(ex: submitit.AutoExecutor, array_size: int) -> str:
    """The sbatch file ``ex`` (a SLURM ``AutoExecutor``) would write for an array of ``array_size`` jobs;
    nothing is written or submitted."""
    inner = ex._executor  # the SlurmExecutor behind the AutoExecutor
    saved = dict(inner.parameters)
    if array_size > 1:
        inner.parameters["map_count"] = array_size
    try:
        return inner._make_submission_file_text(inner._submitit_command_str, "<uid>")
    finally:
        inner.parameters = saved
