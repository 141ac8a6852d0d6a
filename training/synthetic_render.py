"""Rendering of one synthetic PA chest radiograph (and its lesion and lung masks) from its :class:`CaseSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from training.synthetic_cases import Anatomy, CaseSpec, keyed_rng, patient_anatomy

#: 5x7 glyphs of the letters that side markers and burned-in text use ("#" is ink)
_GLYPHS = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    " ": (".....",) * 7,
}


def text_mask(text: str, n: int, height_px: float, row: int, col: int) -> np.ndarray:
    """An ``n`` x ``n`` float mask in [0, 1] of ``text`` (5x7 glyphs), ``height_px`` tall, its top-left at (row, col):
    anti-aliased, so at a small size a marker becomes the bright blob it is in a thumbnail."""
    unknown = set(text) - set(_GLYPHS)
    if unknown:
        raise ValueError(f"no glyph for {sorted(unknown)}")
    bitmap = np.array([[c == "#" for c in "".join(_GLYPHS[ch][r] + "." for ch in text)[:-1]] for r in range(7)],
                      dtype=np.float32)
    zoom = max(height_px, 1.0) / 7.0
    glyphs = np.clip(ndimage.zoom(bitmap, zoom, order=1, grid_mode=True, mode="grid-constant"), 0.0, 1.0)
    out = np.zeros((n, n), dtype=np.float32)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + glyphs.shape[0], n), min(col + glyphs.shape[1], n)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = glyphs[r0 - row:r1 - row, c0 - col:c1 - col]
    return out


def _remap(v: float, src: tuple[float, float], dst: tuple[float, float]) -> float:
    """``v`` drawn from the range ``src``, moved affinely to the site's range ``dst`` (unchanged when they agree)."""
    if src == dst:
        return v
    return dst[0] + (v - src[0]) / (src[1] - src[0]) * (dst[1] - dst[0])


def _smooth_noise(r: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise whose correlation length is ``scale`` (fraction of the image)."""
    low = max(4, int(round(1.0 / max(scale, 1e-3))) * 2)
    g = r.standard_normal((low, low))
    g = ndimage.gaussian_filter(g, 1.0, mode="wrap")
    up = ndimage.zoom(g, size / low, order=3, mode="grid-wrap", grid_mode=True)[:size, :size]
    up -= up.mean()
    s = up.std()
    return up / s if s > 0 else up


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A soft step 0 -> 1 as x goes from +width to -width (inside is x < 0)."""
    return 1.0 / (1.0 + np.exp(np.clip(x / max(width, 1e-6), -40, 40)))


@dataclass
class Rendered:
    """One rendered radiograph: stored pixels, the lesion mask, and what the DICOM header needs."""

    spec: CaseSpec
    pixels: np.ndarray  # uint16, MONOCHROME2
    lesion_mask: np.ndarray  # bool, same shape
    lung_mask: np.ndarray  # bool
    bits_stored: int
    kvp: float
    exposure_mas: float
    anatomy: Anatomy
    lesions: list[dict[str, float]] = field(default_factory=list)


def render(spec: CaseSpec) -> Rendered:
    """Render the radiograph of ``spec`` (deterministic)."""
    n = spec.size
    an = patient_anatomy(spec.seed, spec.patient)
    r = keyed_rng(spec.seed, "study", spec.patient, spec.study)
    site = spec.site_profile
    # the site's own draws come from their own stream, so site 0 renders as before sites existed
    rs = keyed_rng(spec.seed, "site-study", spec.patient, spec.study)
    # study-level positioning: shift, rotation, inspiration depth, and a tilt; some sites position less carefully
    dx, dy = r.uniform(-0.06, 0.06), r.uniform(-0.05, 0.07)
    rot = np.deg2rad(r.uniform(-4, 4))
    if site.extra_rotation_deg or site.extra_shift:
        dx += rs.uniform(-1, 1) * site.extra_shift
        dy += rs.uniform(-1, 1) * site.extra_shift
        rot += np.deg2rad(rs.uniform(-1, 1) * site.extra_rotation_deg)
    insp = r.uniform(0.92, 1.08)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    x0 = (xx + 0.5) / n * 2 - 1 - dx
    y0 = (yy + 0.5) / n * 2 - 1 - dy
    x = x0 * np.cos(rot) - y0 * np.sin(rot)
    y = x0 * np.sin(rot) + y0 * np.cos(rot)
    px = 2.0 / n  # one pixel in normalised units
    edge = 2.5 * px

    # --- soft tissue and thorax outline
    body = _soft(np.sqrt((x / an.body_w) ** 2 + ((y - 0.1) / an.body_h) ** 2) - 1, 0.03)
    # shoulders/axillae: extra soft tissue laterally at the top
    shoulders = _soft(np.sqrt(((np.abs(x) - 0.75) / 0.3) ** 2 + ((y + 0.8) / 0.25) ** 2) - 1, 0.08)
    density = 0.55 * an.soft_tissue * body + 0.1 * shoulders * body
    # breast shadows over the lower lungs
    if an.breast > 0.02:
        for sgn in (-1, 1):
            b = _soft(np.sqrt(((x - sgn * 0.45) / 0.32) ** 2 + ((y - 0.35) / 0.25) ** 2) - 1, 0.12)
            density += 0.3 * an.breast * b * np.clip((y - 0.1) / 0.35, 0, 1)

    # --- lungs (image left = patient right in PA)
    lung_h = an.lung_h * insp
    top = -0.8
    lungs = np.zeros_like(x)
    for sgn, width_scale, dome in ((-1, 1.0, an.dome_r), (1, 0.88, an.dome_l)):
        cx = sgn * (an.lung_gap + an.lung_w * width_scale)
        lx = (x - cx) / (an.lung_w * width_scale)
        # a rounded apex, straighter lateral wall, and a domed base
        ly = (y - (top + lung_h / 2)) / (lung_h / 2)
        shape = np.sqrt(lx**2 + np.maximum(ly, 0) ** 4 + np.minimum(ly, 0) ** 2 * 1.2) - 1
        base = top + lung_h - dome * (1 - np.clip(lx, -1, 1) ** 2) + 0.06 * np.clip(sgn * lx, 0, 1)
        inside = _soft(shape, 0.02) * _soft(y - base, edge)
        lungs = np.maximum(lungs, inside)
    # the heart narrows the left lung
    heart_cx = an.heart_shift
    heart_cy = top + lung_h - an.heart_h * 0.9
    heart = _soft(np.sqrt(((x - heart_cx) / an.heart_w) ** 2 + ((y - heart_cy) / an.heart_h) ** 2) - 1, 0.015)
    mediastinum = _soft(np.abs(x - 0.01) - (an.lung_gap * 0.9 + 0.03 * (y + 0.6)), 0.02) * _soft(y - 0.6, 0.05)
    lungs = lungs * (1 - heart) * (1 - 0.9 * mediastinum)
    lung_density = 0.42 * an.soft_tissue
    # diffuse haze over the lungs (overlying soft tissue, poor inspiration) in every image, whatever its label:
    # it moves global intensity statistics more than a consolidation does, so they cannot reveal the label
    haze = r.uniform(0.0, 0.3) * lung_density
    density -= (lung_density - haze) * lungs
    density += 0.04 * heart + 0.03 * mediastinum
    # abdomen below the diaphragm is soft tissue: already in `body`; add the liver/stomach contrast difference
    density += 0.05 * _soft(-(y - (top + lung_h + 0.05)), 0.04) * body
    # spine
    spine = _soft(np.abs(x - 0.005) - 0.055, 0.01) * body
    density += 0.1 * spine
    # hila and lung markings: vessels radiating from the hila, finer towards the periphery
    r_vessel = keyed_rng(spec.seed, "vessels", spec.patient)
    # thin branching markings: ridges of band-limited noise (|noise| near zero), not blobs that mimic consolidation
    vessels = np.exp(-(_smooth_noise(r_vessel, n, 0.04) / 0.25) ** 2)
    hilum_dist = np.minimum(
        np.hypot(x + an.lung_gap + 0.08, y - (top + 0.45 * lung_h)), np.hypot(x - an.lung_gap - 0.08, y - (top + 0.45 * lung_h))
    )
    markings = vessels * np.exp(-hilum_dist / 0.35)
    density += 0.05 * markings * lungs + 0.08 * np.exp(-((hilum_dist / 0.07) ** 2)) * lungs

    # --- ribs: posterior ribs are arcs sloping down laterally; anterior ribs fainter, sloping the other way
    ribs = np.zeros_like(x)
    for i in range(10):
        yc = top - 0.02 + i * an.rib_pitch * insp
        for sgn in (-1, 1):
            lx = sgn * x  # 0 at the midline, positive laterally
            arc = yc - 0.1 - 0.2 * lx + (0.55 + an.rib_tilt) * lx**2
            d = np.abs(y - arc)
            thick = 0.022 + 0.004 * (i / 10)
            band = _soft(d - thick, px * 1.5) * (lx > 0.04) * _soft(lx - (an.lung_gap + 2.05 * an.lung_w), 0.02)
            cortex = _soft(np.abs(d - thick) - px * 1.2, px) * (lx > 0.04)
            ribs += band * 0.08 + cortex * 0.04 * band.max()
            ant = yc + 0.3 - 0.35 * (0.9 - lx) - 0.2 * an.rib_tilt * (0.9 - lx) ** 2
            d2 = np.abs(y - ant)
            ribs += 0.035 * _soft(d2 - 0.016, px * 2) * (lx > 0.15) * (lx < an.lung_gap + 1.6 * an.lung_w)
    density += ribs * body
    # clavicles: from the sternal notch outwards and slightly upwards
    for sgn in (-1, 1):
        lx = sgn * x
        cl = -0.66 - 0.12 * (lx - 0.1) + 0.25 * (lx - 0.35) ** 2
        clav = _soft(np.abs(y - cl) - 0.025, px * 2) * (lx > 0.06) * (lx < 0.62)
        density += 0.14 * clav

    # --- pneumonia-like consolidations
    lesion_density = np.zeros_like(x)
    lesions: list[dict[str, float]] = []
    if spec.true_label:
        rl = keyed_rng(spec.seed, "lesion", spec.patient, spec.study)
        bilateral = rl.random() < 0.25
        count = int(rl.choice([1, 2, 3], p=[0.6, 0.3, 0.1])) + (1 if bilateral else 0)
        sides = [-1, 1] if bilateral else [int(rl.choice([-1, 1]))]
        lung_pts = np.argwhere(lungs > 0.9)
        for k in range(count):
            side = sides[k % len(sides)]
            side_pts = lung_pts[(x[lung_pts[:, 0], lung_pts[:, 1]] * side) > 0] if len(lung_pts) else lung_pts
            if len(side_pts) == 0:
                side_pts = lung_pts
            if len(side_pts) == 0:
                break
            # lower zones are more often involved (lobar pneumonia), so bias towards larger y
            w = (y[side_pts[:, 0], side_pts[:, 1]] + 1.2) ** 1.5
            j = rl.choice(len(side_pts), p=w / w.sum())
            cy_, cx_ = side_pts[j]
            cxn, cyn = x[cy_, cx_], y[cy_, cx_]
            subtle = rl.random() < 0.1 + 0.3 * spec.difficulty
            size_scale = 1.0 - 0.35 * spec.difficulty
            sx = rl.uniform(0.08, 0.22) * size_scale
            sy = sx * rl.uniform(0.6, 1.5)
            ang = rl.uniform(0, np.pi)
            u = (x - cxn) * np.cos(ang) + (y - cyn) * np.sin(ang)
            v = -(x - cxn) * np.sin(ang) + (y - cyn) * np.cos(ang)
            env = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2) ** rl.uniform(0.8, 1.6))
            tex_scale = rl.uniform(0.015, 0.05)
            tex = _smooth_noise(rl, n, tex_scale)
            # patchy: parts of the envelope are spared; confluent more often when easy
            patch = _soft(-(tex + rl.uniform(0.0, 1.2) - 0.8 * spec.difficulty), 0.5)
            bronchi = np.clip(_smooth_noise(rl, n, 0.02), 1.2, None) - 1.2  # air bronchograms stay darker
            amp = lung_density * rl.uniform(0.45, 0.9) * (1.0 - 0.5 * spec.difficulty)
            if subtle:
                amp *= rl.uniform(0.45, 0.7)
            op = amp * env * (0.45 + 0.55 * patch) * (1 - 0.5 * np.clip(bronchi, 0, 1))
            lesion_density = np.maximum(lesion_density, op)
            lesions.append({"x": float(cxn), "y": float(cyn), "sx": float(sx), "sy": float(sy), "amp": float(amp),
                            "subtle": float(subtle)})
    lung_soft = np.clip(lungs * 1.1, 0, 1)
    density += lesion_density * lung_soft
    lesion_mask = (lesion_density * lung_soft) > 0.25 * max((d["amp"] for d in lesions), default=1.0)

    # --- the site's collimation (the exposed field) and its lead side marker
    field = None
    left = right = top_m = bottom = 0.0
    if site.collimation[1] > 0:
        left, right, top_m, bottom = (float(rs.uniform(*site.collimation)) for _ in range(4))
        u_, v_ = (xx + 0.5) / n, (yy + 0.5) / n
        pen = 1.5 / n  # penumbra
        field = (_soft(left - u_, pen) * _soft(u_ - (1 - right), pen) * _soft(top_m - v_, pen)
                 * _soft(v_ - (1 - bottom), pen))
        lesion_mask &= field > 0.5
    if site.marker:
        left_side = site.marker == "R"  # patient right is image left on a PA film
        h = 0.05 * n
        m_row = int((0.04 + rs.uniform(0.0, 0.08) + top_m) * n)
        inset = 0.05 + rs.uniform(0.0, 0.06)
        m_col = int((inset + left) * n) if left_side else int(n - (inset + right) * n - h * 5 / 7)
        density += 1.5 * text_mask(site.marker, n, h, m_row, m_col)

    # --- acquisition: exposure, kVp-dependent contrast, heel effect, detector, noise
    kvp = _remap(float(r.uniform(100, 130)), (100.0, 130.0), site.kvp)
    mas = float(r.uniform(1.5, 5.0))
    mu = 2.2 * (1.0 + (120 - kvp) / 120)  # harder beams flatten contrast
    transmitted = np.exp(-mu * np.clip(density, 0, None))
    heel = 1.0 + r.uniform(-0.12, 0.12) * site.heel * y + r.uniform(-0.06, 0.06) * site.heel * x
    signal = transmitted * heel * mas
    if field is not None:
        signal = signal * (0.04 + 0.96 * field)  # the collimator's leaves let little through: bright when inverted
    # quantum noise (Poisson-like, relative std falls with dose) plus a little structured detector noise
    q = r.standard_normal(signal.shape).astype(np.float32)
    signal = signal + q * np.sqrt(np.clip(signal, 1e-6, None)) * 0.02 * site.noise * r.uniform(0.7, 1.4)
    signal = signal * (1 + 0.01 * _smooth_noise(r, n, 0.3))
    # MONOCHROME2: dense is bright, so store a log-transformed inverted signal, as DX processing does
    log_img = -np.log(np.clip(signal, 1e-4, None))
    gamma = _remap(r.uniform(0.85, 1.15), (0.85, 1.15), site.gamma)
    lo, hi = np.percentile(log_img, [0.1, 99.9])
    img = np.clip((log_img - lo) / max(hi - lo, 1e-6), 0, 1) ** gamma
    if field is not None and site.shutter:
        img = img * field  # an electronic shutter blanks the unexposed border
    bits = int(r.choice([12, 14, 16]))
    top_val = 2**bits - 1
    offset = _remap(r.uniform(0.02, 0.12), (0.02, 0.12), site.offset)
    scale = _remap(r.uniform(0.75, 0.95), (0.75, 0.95), site.scale)
    stored = np.clip(np.round((offset + scale * img) * top_val), 0, top_val).astype(np.uint16)
    if site.burned_in_text:
        h = 0.035 * n
        width = h * (6 * len(site.burned_in_text) - 1) / 7
        t_row = int((0.03 + rs.uniform(0.0, 0.02)) * n)
        t_col = int(n - width - (0.03 + rs.uniform(0.0, 0.02)) * n)
        stored[text_mask(site.burned_in_text, n, h, t_row, t_col) > 0.5] = top_val
    return Rendered(spec, stored, lesion_mask.astype(bool), lungs > 0.5, bits, kvp, mas, an, lesions)


# ---------------------------------------------------------------------------------------------------------------------
# DICOM
