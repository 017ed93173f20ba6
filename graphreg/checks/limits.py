"""Every limit of the quality checks, in one place (measured reasons: ``docs/quality_checks.md``)."""

# ---------------------------------------------------------------- lung masks (before use)
#: smallest plausible volume of both lungs together (ml); an exhale adult scan holds > 2 l
MASK_MIN_LUNG_ML = 800.0
#: smallest share of the lung volume on the smaller side of the body's left-right midline
#: (two lungs: 0.4-0.5; one lung kept: < 0.05)
MASK_MIN_SIDE_SHARE = 0.2
#: largest share of lung voxels on the image's four in-plane faces (lungs cut by the field of
#: view in-plane, or a mask that leaked into the outside air)
MASK_MAX_BORDER_SHARE = 0.02
#: plausible range of moving / fixed lung volume (inhale-exhale either way, different fields of view)
VOLUME_RATIO_RANGE = (0.45, 2.2)

# ---------------------------------------------------------------- pre-alignment
#: the translation search covers +- this many mm per axis (well past breathing offsets and the
#: error of a centre of mass from a wrong mask, e.g. 74 mm with one lung kept), around zero and
#: around the lungs' centre-of-mass translation
PREALIGN_MAX_MM = 80.0
#: the centre-of-mass translation is kept unless the search's similarity is higher by this much
PREALIGN_NCC_MARGIN = 0.05
#: the two estimates further apart than this (mm) make the result suspect
PREALIGN_AGREE_MM = 20.0

# ---------------------------------------------------------------- outcome (no ground truth)
#: normalised cross-correlation inside the fixed lungs after registration: failed / suspect below
NCC_AFTER_FAILED = 0.5
NCC_AFTER_SUSPECT = 0.75
#: NCC after minus before: suspect below (registration made the lungs less similar; the small
#: tolerance absorbs interpolation when nothing moves)
NCC_GAIN_SUSPECT = -0.01
#: Dice of the warped moving lung mask with the fixed one: failed / suspect below
DICE_FAILED = 0.75
DICE_SUSPECT = 0.9
#: % of voxels with a Jacobian determinant <= 0 inside the fixed lungs: suspect / failed above
FOLDING_SUSPECT = 1.0
FOLDING_FAILED = 5.0
#: standard deviation of log J inside the fixed lungs: suspect above
SDLOGJ_SUSPECT = 0.5
#: mean spread of the keypoints' displacement distributions at the coarse level, as a fraction of
#: that level's search half-range (a flat distribution over the whole cube gives 1): suspect above
SPREAD_SUSPECT_FRACTION = 0.6
#: the coarse search repeated around the final field: a keypoint it moves by more than this many
#: working voxels counts as missed motion; suspect when more than this share of the keypoints does
#: (correct results on the realistic benchmark: <= 0.039; motion past the search range: >= 0.18)
RESIDUAL_MOVE_VOXELS = 2.0
RESIDUAL_SUSPECT_SHARE = 0.1
