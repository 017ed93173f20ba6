"""Many anatomies from one CT, and breathing-motion patterns from every DIR-Lab landmark set.

A *new patient* is the source CT pulled through a smooth invertible map ``a`` (patient world mm
-> source world mm): per-axis lung size, left/right asymmetry, a lateral mediastinum shift and
optionally left-right mirroring; plus density changes of the lung parenchyma (a global HU offset
and emphysema-like low-density regions). An anatomy is a pure function of its id: ids in
:data:`BENCHMARK_ANATOMIES` are for benchmark pairs, ids in :data:`TRAINING_ANATOMIES` for
training pairs, and :func:`check_anatomy_id` refuses an id from the other range.

A *motion pattern* is the inhale -> exhale displacement of the 300 landmarks of one DIR-Lab set
(:data:`MOTION_SETS`: the ten 4DCT cases and COPD case 1), randomly mirrored, rotated and scaled
per axis, mapped into a patient's lung box and interpolated by a thin-plate spline.

Convention:
    World mm ``(x, y, z)`` LPS (``+x`` patient's left, ``+y`` back, ``+z`` head); point arrays
    ``(N, 3)`` float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.spatial.transform import Rotation

from graphreg.errors import GraphregError
from graphreg.io.dirlab import dirlab_case
from graphreg.io.landmarks import read_landmarks
from graphreg.datasets.paths import reference_data_dir

#: Anatomy ids of benchmark pairs (half-open range).
BENCHMARK_ANATOMIES = range(0, 1000)
#: Anatomy ids of training pairs; disjoint from :data:`BENCHMARK_ANATOMIES`.
TRAINING_ANATOMIES = range(1000, 2**31)
#: DIR-Lab landmark sets the breathing motion is drawn from.
MOTION_SETS = tuple(f"4dct{i}" for i in range(1, 11)) + ("copd1",)
#: Seed component of an anatomy's random stream.
_ANATOMY_STREAM = 4241
#: TPS smoothing (mm^2 kernel units) per kind of set: COPD keeps its local heterogeneity.
_SMOOTHING = {"4dct": 100.0, "copd": 5.0}


def check_anatomy_id(anatomy_id: int, purpose: str) -> int:
    """``anatomy_id`` if it lies in the range of ``purpose`` ("benchmark" or "training").

    Raises:
        GraphregError: unknown purpose, or the id belongs to the other range (train and benchmark
            anatomies must never overlap).
    """
    ranges = {"benchmark": BENCHMARK_ANATOMIES, "training": TRAINING_ANATOMIES}
    if purpose not in ranges:
        raise GraphregError(f"purpose: expected 'benchmark' or 'training', got {purpose!r}")
    if int(anatomy_id) not in ranges[purpose]:
        span = ranges[purpose]
        raise GraphregError(f"anatomy_id: expected a {purpose} anatomy in [{span.start}, {span.stop}), "
                            f"got {anatomy_id}")
    return int(anatomy_id)


@dataclass(frozen=True)
class Anatomy:
    """A new patient made from the source CT (see the module docstring).

    Attributes:
        anatomy_id: the id it was drawn from.
        mirror: left-right mirrored about the lungs' mid-plane.
        scale: lung size factors ``(x, y, z)`` (patient / source).
        asymmetry: ``(ax, az)``: the left lung is ``1 + a`` and the right ``1 - a`` times as wide
            (x) and tall (z) as the mean scale gives, blended over ±30 mm about the mid-plane.
        mediastinum_mm: lateral shift of the mediastinum (fades over ~45 mm to either side).
        hu_offset: HU added to the lung parenchyma.
        emphysema: per region ``(cx, cy, cz, radius_mm, strength)``: centre as a fraction of the
            source lung box, ``strength`` the fraction of ``HU + 1000`` removed in the region's
            core; the profile is flat-topped (``exp(-0.5 (r / radius)^4)``: full strength to
            about half the radius), so typical parenchyma (-850 HU) falls below -950 HU there.
    """

    anatomy_id: int
    mirror: bool
    scale: tuple[float, float, float]
    asymmetry: tuple[float, float]
    mediastinum_mm: float
    hu_offset: float
    emphysema: tuple[tuple[float, float, float, float, float], ...]

    @classmethod
    def draw(cls, anatomy_id: int, purpose: str) -> "Anatomy":
        """The anatomy of ``anatomy_id``, checked against ``purpose`` (:func:`check_anatomy_id`)."""
        anatomy_id = check_anatomy_id(anatomy_id, purpose)
        rng = np.random.default_rng([_ANATOMY_STREAM, anatomy_id])
        regions = []
        if rng.uniform() < 0.5:
            for _ in range(int(rng.integers(1, 4))):
                centre = rng.uniform(0.2, 0.8, size=3)
                regions.append((*centre, rng.uniform(15.0, 35.0), rng.uniform(0.75, 0.95)))
        return cls(anatomy_id=anatomy_id, mirror=bool(rng.uniform() < 0.5),
                   scale=tuple(rng.uniform(0.85, 1.12, size=3)),
                   asymmetry=tuple(rng.uniform(-0.08, 0.08, size=2)),
                   mediastinum_mm=float(rng.uniform(-10.0, 10.0)),
                   hu_offset=float(rng.uniform(-40.0, 40.0)), emphysema=tuple(regions))

    @classmethod
    def identity(cls, anatomy_id: int = 0) -> "Anatomy":
        """The source patient unchanged (for tests and comparisons)."""
        return cls(anatomy_id, False, (1.0, 1.0, 1.0), (0.0, 0.0), 0.0, 0.0, ())

    def source_points(self, points: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``a(x)``: source world mm of patient world points ``(N, 3)``; ``centre`` is the source
        lung box centre ``(3,)`` (fixed point of the size change)."""
        r = np.asarray(points, dtype=np.float64) - centre
        x = r[:, 0]
        r = r.copy()
        r[:, 0] = x - self.mediastinum_mm * np.exp(-0.5 * (x / 45.0) ** 2)
        side = np.tanh(r[:, 0] / 30.0)  # -1 right, +1 left
        scale = np.broadcast_to(np.asarray(self.scale, dtype=np.float64), r.shape).copy()
        scale[:, 0] *= 1.0 + self.asymmetry[0] * side
        scale[:, 2] *= 1.0 + self.asymmetry[1] * side
        r = r / scale
        if self.mirror:
            r[:, 0] = -r[:, 0]
        return r + centre

    def lung_hu(self, hu: np.ndarray, source_points: np.ndarray, in_lung: np.ndarray,
                box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Parenchyma density changes at ``source_points`` ``(N, 3)``.

        ``hu`` ``(N,)`` float32 is changed where ``in_lung`` ``(N,)`` bool and the tissue is
        parenchyma (weight 1 below -600 HU, 0 above -300 HU, so vessels keep their density);
        ``box`` is the source lung box ``(lo, hi)`` world mm.
        """
        weight = np.clip((-300.0 - hu) / 300.0, 0.0, 1.0) * in_lung
        out = hu + np.float32(self.hu_offset) * weight
        lo, hi = box
        for cx, cy, cz, radius, strength in self.emphysema:
            centre = lo + np.array([cx, cy, cz]) * (hi - lo)
            blob = np.exp(-0.5 * (np.sum((source_points - centre) ** 2, axis=1) / radius**2) ** 2)
            out = out - (out + 1000.0) * np.float32(strength) * (blob * weight).astype(np.float32)
        return out.astype(np.float32)


def check_invertible(anatomy: Anatomy, box: tuple[np.ndarray, np.ndarray], centre: np.ndarray,
                     step_mm: float = 4.0, min_jacobian: float = 0.3) -> float:
    """Minimum Jacobian determinant of ``a`` over the patient box ``(lo, hi)`` (finite differences).

    Raises:
        GraphregError: the minimum is below ``min_jacobian``.
    """
    lo, hi = box
    axes = [np.arange(a, b + step_mm, step_mm) for a, b in zip(lo, hi)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    h = 0.5
    columns = [(anatomy.source_points(points + h * e, centre) - anatomy.source_points(points - h * e, centre))
               / (2 * h) for e in np.eye(3)]
    jac = np.linalg.det(np.stack(columns, axis=-1))
    worst = float(np.abs(jac).min()) if anatomy.mirror else float(jac.min())
    if worst < min_jacobian:
        raise GraphregError(f"anatomy {anatomy.anatomy_id}: expected an invertible map (|J| >= "
                            f"{min_jacobian}), got {worst:.3f}")
    return worst


# ---------------------------------------------------------------------- motion patterns
def motion_landmarks(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inhale positions and inhale -> exhale displacements of a DIR-Lab set, LPS-like world mm.

    ``name`` is one of :data:`MOTION_SETS`. Slices are negated so that ``+z`` is cranial (see
    :func:`graphreg.datasets.breathing.dirlab_motion`). For the breath-hold COPD scans the mean
    x/y displacement (the patient's repositioning between the scans) is removed.

    Returns:
        ``(positions, displacements)``, both ``(300, 3)`` float64.
    """
    if name not in MOTION_SETS:
        raise GraphregError(f"name: expected one of {', '.join(MOTION_SETS)}, got {name!r}")
    root = Path(data_dir) if data_dir is not None else reference_data_dir() / "dirlab"
    if name.startswith("4dct"):
        case = int(name[4:])
        folder = root / "4dct" / f"case{case}"
        files = (folder / f"Case{case}_300_T00_xyz.txt", folder / f"Case{case}_300_T50_xyz.txt")
    else:
        folder = root / "copd" / name
        files = (folder / f"{name}_300_iBH_xyz_r1.txt", folder / f"{name}_300_eBH_xyz_r1.txt")
    grid = dirlab_case(name).grid
    flip = np.array([1.0, 1.0, -1.0])
    inhale, exhale = (grid.voxel_to_world(read_landmarks(f, fmt="dirlab").points) * flip for f in files)
    displacement = exhale - inhale
    if name.startswith("copd"):
        displacement[:, :2] -= displacement[:, :2].mean(axis=0)
    return inhale, displacement


@dataclass(frozen=True)
class MotionPattern:
    """How a DIR-Lab set's motion is placed into a patient: ``set_name``, ``mirror`` (left-right),
    ``rotation_deg`` (x, y, z Euler angles), per-axis ``scale`` of the displacements and the
    global ``translation_mm`` of the whole body between the scans (repositioning)."""

    set_name: str
    mirror: bool
    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    translation_mm: tuple[float, float, float]

    @classmethod
    def draw(cls, set_name: str, rng: np.random.Generator) -> "MotionPattern":
        """Random placement: mirror with probability 1/2, rotations within ±10°, displacement
        scale 0.7..1.3 overall times 0.85..1.15 per axis, translation N(0, 2 mm) per axis."""
        overall = rng.uniform(0.7, 1.3)
        return cls(set_name, bool(rng.uniform() < 0.5), tuple(rng.uniform(-10.0, 10.0, size=3)),
                   tuple(overall * rng.uniform(0.85, 1.15, size=3)), tuple(rng.normal(0.0, 2.0, size=3)))

    def lung_motion(self, lung_box: tuple[np.ndarray, np.ndarray], data_dir: str | Path | None = None):
        """The lung motion as a callable ``(N, 3) world mm -> (N, 3) mm`` for lungs in ``lung_box``.

        The landmarks are rotated about their centre, mapped per axis from their bounding box onto
        ``lung_box`` (displacements scaled alike, then by :attr:`scale`) and interpolated by a
        thin-plate spline with the set's smoothing (affine part included).
        """
        points, disp = motion_landmarks(self.set_name, data_dir)
        centre = 0.5 * (points.min(0) + points.max(0))
        rotation = Rotation.from_euler("xyz", self.rotation_deg, degrees=True).as_matrix()
        points = (points - centre) @ rotation.T + centre
        disp = disp @ rotation.T
        if self.mirror:
            points[:, 0] = 2 * centre[0] - points[:, 0]
            disp[:, 0] = -disp[:, 0]
        lo, hi = (np.asarray(b, dtype=np.float64) for b in lung_box)
        src_lo, src_hi = points.min(0), points.max(0)
        factor = (hi - lo) / (src_hi - src_lo)
        mapped = lo + (points - src_lo) * factor
        smoothing = _SMOOTHING["copd" if self.set_name.startswith("copd") else "4dct"]
        return RBFInterpolator(mapped, disp * factor * np.asarray(self.scale), kernel="thin_plate_spline",
                               smoothing=smoothing)
