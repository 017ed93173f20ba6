"""Learn2Reg task folders end to end: read a ``dataset.json``, register a split into a submission,
evaluate a submission with the official metrics (``graphreg l2r run`` / ``graphreg l2r evaluate``).

- :mod:`.dataset`: the task folder and the pairs of a split (all checks before anything runs).
- :mod:`.run`: register every pair, resumable, failure-isolated; ``disp_<id>.nii.gz`` files.
- :mod:`.evaluate`: the official TRE / SDlogJ / Dice of a submission folder.
- :mod:`.example`: a small task folder made from the bundled demo pair.
"""

from graphreg.apps.l2r.dataset import SPLITS, L2RDataset, L2RPair, pair_id, read_dataset
from graphreg.apps.l2r.evaluate import METRICS, check_submission_file, evaluate_pair, evaluate_submission
from graphreg.apps.l2r.example import write_example_task
from graphreg.apps.l2r.run import L2RRunResult, run_l2r, submission_field

__all__ = ["L2RDataset", "L2RPair", "L2RRunResult", "METRICS", "SPLITS", "check_submission_file", "evaluate_pair",
           "evaluate_submission", "pair_id", "read_dataset", "run_l2r", "submission_field", "write_example_task"]
