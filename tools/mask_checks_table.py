"""Print the automatic lung mask checks of CT images against the first one (Markdown table).

Usage: python tools/mask_checks_table.py FIRST.nii.gz OTHER.nii.gz ...
(docs/quality_checks.md: the POPI 4D-CT phases, /work/shared/data/popi_light/phase_*.nii.gz)
"""

import sys

import numpy as np

from graphreg.checks.masks import mask_checks, volume_ratio_check
from graphreg.checks.prealign import coarse_to_fine_search
from graphreg.ops.lungmask import lung_mask
from graphreg.io.images import read_image
from graphreg.methods.keypoint.preprocess import centre_of_mass_mm


def main(paths: list[str]) -> None:
    first = read_image(paths[0])
    first_mask = lung_mask(first)
    print("| image | lung volume ml | two_lungs (side share) | in_view | ratio to the first | "
          "centre of mass mm | search mm (NCC) |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        image = read_image(path)
        mask = lung_mask(image)
        checks = {c.name.split(".")[1]: c for c in mask_checks(mask, image, "mask")}
        ratio = volume_ratio_check(first_mask, mask)
        com = centre_of_mass_mm(mask) - centre_of_mass_mm(first_mask)
        search, ncc = coarse_to_fine_search(first, first_mask, image)
        cells = [f"{checks[n].value:.3g} {checks[n].verdict}" for n in ("lung_volume_ml", "two_lungs", "in_view")]
        print(f"| {path} | {' | '.join(cells)} | {ratio.value:.3f} {ratio.verdict} | {np.round(com, 1).tolist()} | "
              f"{np.round(search, 1).tolist()} ({ncc:.3f}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
