"""An interactive 3D view of a result's keypoints and lung surface for ``report.html``.

:func:`view_payload` gathers the numbers (keypoints, displacements, uncertainty, a decimated lung
surface, colour tables); :func:`view_html` turns them into one ``<div>`` with a ``<canvas>`` and a
small dependency-free script (canvas 2D, no WebGL, no library, no network): drag to rotate,
shift-drag to pan, wheel to zoom, double-click to reset, a menu to colour the keypoints by
displacement magnitude or by uncertainty. docs/figures.md says why it is not plotly.

Convention:
    Points are world mm ``(x, y, z)`` (LPS). The first view is from the front with the head up
    (patient right on the left of the picture), as the ``"anterior"`` scene.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

#: the element id of the view's data block (one view per page)
DATA_ID = "graphreg-view3d-data"
_LUT_SIZE = 64


def _lut(cmap: str) -> list[str]:
    import matplotlib

    rgb = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, _LUT_SIZE))[:, :3]
    return ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in row) for row in rgb]


def _mode(label: str, values: np.ndarray, cmap: str, vmin: float, vmax: float) -> dict:
    if not vmax > vmin:
        vmax = vmin + 1.0
    return {"label": label, "values": np.round(values, 2).tolist(), "vmin": round(float(vmin), 3),
            "vmax": round(float(vmax), 3), "lut": _lut(cmap)}


def view_payload(points_mm, displacement_mm, uncertainty_mm=None, surface=None,
                 max_triangles: int = 5000) -> dict:
    """The numbers of the interactive view, as plain JSON values.

    Shapes:
        points_mm, displacement_mm: ``(N, 3)`` world mm (fixed keypoints, fixed -> moving);
        uncertainty_mm: ``(N,)`` mm or None; surface: an ``open3d.geometry.TriangleMesh`` in
        world mm or None, decimated to at most ``max_triangles`` triangles for the page.

    Returns:
        ``{"points", "displacement", "vertices", "triangles", "centre", "radius", "modes"}``;
        ``modes`` maps ``"magnitude"`` (and ``"uncertainty"`` when given) to its label, values,
        colour range (magnitude from 0, uncertainty from its 1st percentile; both to the 99th
        percentile, as the PNG scenes) and a colour table.
    """
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    disp = np.asarray(displacement_mm, dtype=np.float64).reshape(points.shape)
    magnitude = np.linalg.norm(disp, axis=1)
    modes = {"magnitude": _mode("displacement |u| (mm)", magnitude, "viridis", 0.0,
                                float(np.percentile(magnitude, 99)) if len(magnitude) else 1.0)}
    if uncertainty_mm is not None:
        spread = np.asarray(uncertainty_mm, dtype=np.float64).ravel()
        modes["uncertainty"] = _mode("uncertainty (mm)", spread, "magma_r", float(np.percentile(spread, 1)),
                                     float(np.percentile(spread, 99)))
    vertices = np.zeros((0, 3))
    triangles = np.zeros((0, 3), dtype=np.int64)
    if surface is not None:
        if len(surface.triangles) > max_triangles:
            surface = surface.simplify_quadric_decimation(int(max_triangles))
        vertices, triangles = np.asarray(surface.vertices), np.asarray(surface.triangles)
    everything = np.concatenate([points, vertices]) if len(vertices) else points
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    return {"points": np.round(points, 1).tolist(), "displacement": np.round(disp, 2).tolist(),
            "vertices": np.round(vertices, 1).tolist(), "triangles": triangles.astype(int).tolist(),
            "centre": ((lo + hi) / 2.0).round(1).tolist(),
            "radius": round(max(float(np.linalg.norm(hi - lo)) / 2.0, 1.0), 1), "modes": modes}


_SCRIPT = r"""
(function () {
  var d = JSON.parse(document.getElementById("%(data_id)s").textContent);
  var root = document.getElementById("graphreg-view3d");
  var canvas = root.querySelector("canvas"), ctx = canvas.getContext("2d");
  var menu = root.querySelector("select"), boxes = root.querySelectorAll("input");
  var P = d.points, U = d.displacement, V = d.vertices, T = d.triangles, c = d.centre;
  var st;
  function reset() { st = {yaw: 0, pitch: 0, zoom: 1, panx: 0, pany: 0}; }
  reset();
  // world LPS mm -> [screen x, screen y, depth, view x, view up, view depth]; yaw = pitch = 0:
  // seen from the front (anterior), head up, patient left (+x) on the right of the picture
  function view(p) {
    var x = p[0] - c[0], y = p[1] - c[1], z = p[2] - c[2];
    var cy = Math.cos(st.yaw), sy = Math.sin(st.yaw), cp = Math.cos(st.pitch), sp = Math.sin(st.pitch);
    var x1 = cy * x - sy * y, y1 = sy * x + cy * y;
    var up = cp * z - sp * y1, depth = sp * z + cp * y1;
    var s = st.zoom * 0.62 * Math.min(canvas.width, canvas.height) / d.radius;
    return [canvas.width / 2 + st.panx + s * x1, canvas.height / 2 + st.pany - s * up, depth, x1, up, depth];
  }
  function colourBar(mode) {
    var stops = mode.lut.filter(function (_, i) { return i %% 4 === 0; });
    root.querySelector(".bar").style.background = "linear-gradient(to right," + stops.join(",") + ")";
    root.querySelector(".vmin").textContent = mode.vmin.toFixed(1);
    root.querySelector(".vmax").textContent = mode.vmax.toFixed(1) + "  " + mode.label;
  }
  function draw() {
    var mode = d.modes[menu.value], n = mode.lut.length;
    var showSurface = boxes[1].checked, showVectors = boxes[0].checked;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    var pv = P.map(view), items = [], i;
    var ends = showVectors ? P.map(function (p, k) { return view([p[0] + U[k][0], p[1] + U[k][1], p[2] + U[k][2]]); }) : null;
    var vv = showSurface ? V.map(view) : [];
    if (showSurface) for (i = 0; i < T.length; i++)
      items.push([(vv[T[i][0]][2] + vv[T[i][1]][2] + vv[T[i][2]][2]) / 3, 0, i]);
    for (i = 0; i < P.length; i++) items.push([pv[i][2], 1, i]);
    items.sort(function (a, b) { return b[0] - a[0]; });  // far to near
    for (var k = 0; k < items.length; k++) {
      i = items[k][2];
      if (items[k][1] === 0) {
        var a = vv[T[i][0]], b = vv[T[i][1]], e = vv[T[i][2]];
        var ux = b[3] - a[3], uy = b[4] - a[4], uz = b[5] - a[5], wx = e[3] - a[3], wy = e[4] - a[4], wz = e[5] - a[5];
        var nx = uy * wz - uz * wy, ny = uz * wx - ux * wz, nz = ux * wy - uy * wx;
        var shade = 0.35 + 0.65 * Math.abs(nz) / (Math.sqrt(nx * nx + ny * ny + nz * nz) || 1);
        ctx.fillStyle = "rgba(" + Math.round(140 * shade) + "," + Math.round(179 * shade) + "," +
                        Math.round(217 * shade) + ",0.22)";
        ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.lineTo(e[0], e[1]);
        ctx.closePath(); ctx.fill();
      } else {
        var t = (mode.values[i] - mode.vmin) / (mode.vmax - mode.vmin);
        var colour = mode.lut[Math.max(0, Math.min(n - 1, Math.round(t * (n - 1))))];
        if (ends) {
          ctx.strokeStyle = colour; ctx.lineWidth = 1.5;
          ctx.beginPath(); ctx.moveTo(pv[i][0], pv[i][1]); ctx.lineTo(ends[i][0], ends[i][1]); ctx.stroke();
        }
        ctx.fillStyle = colour;
        ctx.beginPath(); ctx.arc(pv[i][0], pv[i][1], 3, 0, 2 * Math.PI); ctx.fill();
      }
    }
    colourBar(mode);
  }
  var pending = false;
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; draw(); }); } }
  var drag = null;
  canvas.addEventListener("mousedown", function (ev) { drag = [ev.clientX, ev.clientY, ev.shiftKey]; });
  window.addEventListener("mouseup", function () { drag = null; });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag[0], dy = ev.clientY - drag[1];
    if (drag[2]) { st.panx += dx; st.pany += dy; }
    else { st.yaw += dx * 0.01; st.pitch = Math.max(-1.57, Math.min(1.57, st.pitch + dy * 0.01)); }
    drag[0] = ev.clientX; drag[1] = ev.clientY;
    redraw();
  });
  canvas.addEventListener("wheel", function (ev) { ev.preventDefault(); st.zoom *= Math.exp(-ev.deltaY * 0.001); redraw(); },
                          {passive: false});
  canvas.addEventListener("dblclick", function () { reset(); redraw(); });
  menu.addEventListener("change", redraw);
  boxes.forEach(function (box) { box.addEventListener("change", redraw); });
  draw();
})();
"""

_CSS = """
#graphreg-view3d canvas { border: 1px solid #ddd; cursor: grab; max-width: 100%; }
#graphreg-view3d .controls { font-size: 0.85em; margin: 0.3em 0; }
#graphreg-view3d .legend { font-size: 0.8em; display: flex; align-items: center; gap: 6px; }
#graphreg-view3d .bar { display: inline-block; width: 240px; height: 12px; border: 1px solid #ccc; }
"""


def view_html(payload: dict, width: int = 960, height: int = 640) -> str:
    """The ``<style>``, ``<div>`` and ``<script>`` elements of the view (one per page)."""
    import html

    options = "".join(f'<option value="{html.escape(name)}">{html.escape(mode["label"])}</option>'
                      for name, mode in payload["modes"].items())
    surface = ('<label><input type="checkbox" checked> lung surface</label> ' if payload["triangles"]
               else '<input type="checkbox" hidden>')  # the script reads the second box either way
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return (f"<style>{_CSS}</style>"
            f'<div id="graphreg-view3d"><div class="controls">colour: <select>{options}</select> '
            '<label><input type="checkbox" checked> displacement vectors</label> '
            f"{surface}"
            "&mdash; drag: rotate, shift+drag: pan, wheel: zoom, double-click: reset</div>"
            f'<canvas width="{int(width)}" height="{int(height)}"></canvas>'
            '<div class="legend"><span class="vmin"></span><span class="bar"></span><span class="vmax"></span></div></div>'
            f'<script type="application/json" id="{DATA_ID}">{data}</script>'
            f"<script>{_SCRIPT % {'data_id': DATA_ID}}</script>")


def keypoint_view(points_mm, displacement_mm, uncertainty_mm=None, surface=None) -> Optional[str]:
    """:func:`view_html` of :func:`view_payload`, or None without keypoints."""
    if points_mm is None or len(points_mm) == 0:
        return None
    return view_html(view_payload(points_mm, displacement_mm, uncertainty_mm, surface))
