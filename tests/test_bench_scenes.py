"""Benchmark scenes: determinism, exact edit truths, detector accuracy, captions."""
import math

import numpy as np
import pytest

from diffeditor.bench import detector as D
from diffeditor.bench import scenes as S


def _centroid(m):
    ys, xs = np.nonzero(m)
    return xs.mean() + 0.5, ys.mean() + 0.5


# ------------------------------------------------------------------------------------------ generator
def test_same_seed_identical_different_seed_differs():
    a, b, c = S.make_scene(7), S.make_scene(7), S.make_scene(8)
    assert np.array_equal(a.image(), b.image()) and a.objects == b.objects and a.caption() == b.caption()
    assert all(np.array_equal(x, y) for x, y in zip(a.masks(), b.masks()))
    assert not np.array_equal(a.image(), c.image())
    assert not np.array_equal(S.make_scene(7, n_objects=2).background, S.make_scene(9, n_objects=2).background)


def test_scene_format_and_validity():
    for seed in range(50):
        s = S.make_scene(seed)
        img = s.image()
        assert img.shape == (64, 64, 3) and img.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1
        assert 1 <= len(s.objects) <= 3 and s.valid()
        for o, m in zip(s.objects, s.masks()):
            assert m.any() and not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
            assert np.allclose(img[m & (o.coverage() >= 1)], o.rgb)  # the object's interior is its colour
        # masks are disjoint
        assert sum(m.astype(int) for m in s.masks()).max() <= 1


def test_generator_covers_vocabulary():
    seen = {"shape": set(), "color": set(), "palette": set()}
    for seed in range(300):
        s = S.make_scene(seed)
        seen["palette"].add(s.palette)
        for o in s.objects:
            seen["shape"].add(o.shape)
            seen["color"].add(o.color)
    assert seen == {"shape": set(S.SHAPES), "color": set(S.COLOR_NAMES), "palette": set(S.PALETTE_NAMES)}


def test_caption_mentions_every_object():
    for seed in range(100):
        s = S.make_scene(seed)
        cap = s.caption()
        assert cap.startswith("a ") and cap.endswith(f"on a {s.palette} background")
        for o in s.objects:
            assert f"a {o.color} {o.shape}" in cap
        assert cap.count(" a ") + 1 == len(s.objects) + 1  # one article per object + the background's
        assert set(cap.replace(",", "").split()) <= set(S.CAPTION_WORDS)
    assert S.caption([], "sky") == "a sky background"
    assert S.caption([S.Obj("circle", "red", 20, 20, 6), S.Obj("square", "blue", 40, 40, 6)], "sand") == \
        "a red circle and a blue square on a sand background"


def test_background_is_far_from_every_object_colour():
    """The detector's threshold separates every palette (gradient + texture) from every object colour."""
    worst = min(np.linalg.norm(S.make_scene(seed).background[:, :, None] - D.PALETTE_RGB[None, None], axis=-1).min()
                for seed in range(120))
    assert worst > D.DEFAULT_THRESHOLD + 0.15
    cols = D.PALETTE_RGB
    pair = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(len(cols)) * 9
    assert pair.min() > 0.3


# ----------------------------------------------------------------------------------------------- edits
@pytest.mark.parametrize("seed", range(8))
def test_integer_move_shifts_mask_exactly(seed):
    s = S.make_scene(seed)
    case = S.random_edit(s, "move", np.random.default_rng(seed))
    assert case is not None
    i, dx, dy = case.index, int(case.dx), int(case.dy)
    assert (dx, dy) == (case.dx, case.dy)
    src = s.objects[i].mask()
    shifted = np.zeros_like(src)
    ys, xs = np.nonzero(src)
    shifted[ys + dy, xs + dx] = True  # the object is fully inside the canvas before and after
    assert np.array_equal(case.target_mask, shifted)
    assert np.array_equal(case.truth_masks[i], shifted)
    # anti-aliased coverage moves exactly too
    cov, cov2 = s.objects[i].coverage(), case.truth.objects[i].coverage()
    assert np.array_equal(np.roll(np.roll(cov, dy, 0), dx, 1), cov2)
    # the vacated area shows the background, other objects are unchanged
    vac = src & (cov2 == 0)  # vacated and not touched by the moved object's anti-aliased edge
    assert vac.sum() > 0.2 * (src & ~shifted).sum()
    assert np.array_equal(case.truth_image[vac], s.background[vac])
    outside = ~case.edit_region
    for k, (m0, m1) in enumerate(zip(s.masks(), case.truth_masks)):
        if k != i:
            assert np.array_equal(m0, m1)
    diff = np.abs(case.truth_image - case.source_image).max(-1)
    assert diff[_dilate(~outside, 1) == 0].max() == 0  # nothing changes away from the edit


def _dilate(m, r):
    from diffeditor.bench.detector import _dilate as d
    return d(m, r)


@pytest.mark.parametrize("scale", [0.6, 0.8, 1.25, 1.5])
def test_resize_keeps_centroid(scale):
    for shape in S.SHAPES:
        s = S.Scene(S.make_scene(3).background, (S.Obj(shape, "red", 32.125, 31.5, 9.0, 12.0),), "sand")
        case = S.resize(s, 0, scale)
        c0, c1 = _centroid(case.source_mask), _centroid(case.target_mask)
        assert math.hypot(c1[0] - c0[0], c1[1] - c0[1]) < 0.35, shape
        assert case.target_mask.sum() / case.source_mask.sum() == pytest.approx(scale ** 2, rel=0.12)
        assert math.hypot(c1[0] - 32.125, c1[1] - 31.5) < 0.5


def test_drag_move_is_a_move():
    s = S.make_scene(11)
    case = S.drag_move(s, 0, 5, -3, validate=False)
    ref = S.move(s, 0, 5, -3, validate=False)
    assert np.array_equal(case.truth_image, ref.truth_image)
    assert case.handles.shape == case.targets.shape == (2, 2)
    assert np.allclose(case.targets - case.handles, [5, -3])
    # handles lie on the object's boundary extremities (inside its bbox)
    x0, y0, x1, y1 = s.objects[0].bbox()
    assert np.all((case.handles[:, 0] >= x0 - 1e-9) & (case.handles[:, 0] <= x1 + 1e-9))
    assert np.all((case.handles[:, 1] >= y0 - 1e-9) & (case.handles[:, 1] <= y1 + 1e-9))


@pytest.mark.parametrize("shape", S.SHAPES)
@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_drag_stretch_truth_is_exact_affine_stretch(shape, side):
    o = S.Obj(shape, "blue", 30.0, 34.0, 8.0, 17.0)
    s = S.Scene(S.make_scene(0).background, (o,), "slate")
    case = S.drag_stretch(s, 0, side, 6.0)
    t = case.truth.objects[0]
    h, tg = case.handles, case.targets
    assert np.allclose(np.linalg.norm(tg[0] - h[0]), 6.0) and np.allclose(tg[1], h[1])  # pinned handle
    # the dragged extremity lands on its target, the pinned one stays
    assert np.allclose(t.to_world(t.extremity(side)[None])[0], tg[0], atol=1e-9)
    opp = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[side]
    assert np.allclose(t.to_world(t.extremity(opp)[None])[0], h[1], atol=1e-9)
    # every vertex follows the affine map u -> a + (u - a) * f along the axis
    if shape != "circle":
        v0, v1 = o.to_world(o.local_vertices()), t.to_world(t.local_vertices())
        ax = o.axis("y" if side in ("top", "bottom") else "x")
        perp = np.array([-ax[1], ax[0]])
        assert np.allclose((v1 - v0) @ perp, 0, atol=1e-9)  # nothing moves across the axis
    assert case.target_mask.sum() > case.source_mask.sum()


def test_appearance_recolours_only_the_object():
    s = S.Scene(S.make_scene(4).background, (S.Obj("circle", "red", 18, 20, 8), S.Obj("square", "cyan", 44, 40, 7)),
                "sand")
    case = S.appearance(s, 0, 1)
    assert case.truth.objects[0].color == "cyan" and case.truth.objects[0].shape == "circle"
    assert np.array_equal(case.target_mask, case.source_mask) and np.array_equal(case.ref_mask, s.masks()[1])
    changed = np.abs(case.truth_image - case.source_image).max(-1) > 0
    assert changed.any() and not (changed & ~_dilate(case.source_mask, 1)).any()
    assert case.prompt == "a cyan circle and a cyan square on a sand background"


def test_paste_and_remove():
    a = S.Scene(S.make_scene(5).background, (S.Obj("circle", "red", 16, 16, 7),), "grass")
    b = S.Scene(S.make_scene(6).background, (S.Obj("triangle", "yellow", 20, 20, 8),), "sky")
    case = S.paste(a, b, 0, 24, 22)
    assert len(case.truth.objects) == 2 and case.truth.objects[1].color == "yellow"
    ys, xs = np.nonzero(case.ref_mask)
    shifted = np.zeros_like(case.ref_mask)
    shifted[ys + 22, xs + 24] = True
    assert np.array_equal(case.target_mask, shifted)
    assert case.inputs().keys() >= {"image", "ref_image", "ref_mask", "dx", "dy", "prompt"}
    with pytest.raises(S.InvalidEdit):
        S.paste(a, b, 0, -4, -4)  # onto the red circle
    with pytest.raises(S.InvalidEdit):
        S.move(a, 0, -15, 0)  # off the canvas

    s = S.Scene(a.background, (S.Obj("circle", "red", 16, 16, 7), S.Obj("square", "red", 44, 44, 7),
                               S.Obj("circle", "blue", 44, 16, 6)), "grass")
    r = S.remove(s, "red")
    assert [o.color for o in r.truth.objects] == ["blue"] and r.params["removed"] == [0, 1]
    assert np.array_equal(r.truth_image, S.Scene(a.background, (s.objects[2],), "grass").image())
    gone = s.masks()[0] | s.masks()[1]
    assert np.array_equal(r.source_mask, gone)
    assert np.array_equal(r.truth_image[gone], s.background[gone])
    r2 = S.remove(s, "circle")
    assert [o.shape for o in r2.truth.objects] == ["square"]
    assert S.remove(s, "green").truth.objects == s.objects


def test_random_edits_are_valid_and_deterministic():
    for kind in S.EDIT_KINDS:
        n = 0
        for seed in range(15):
            s = S.make_scene(seed)
            c1 = S.random_edit(s, kind, np.random.default_rng(seed))
            c2 = S.random_edit(s, kind, np.random.default_rng(seed))
            if c1 is None:
                assert kind == "paste" and len(s.objects) == 3
                continue
            n += 1
            assert c1.kind == kind and c1.truth.valid()
            assert np.array_equal(c1.truth_image, c2.truth_image)
            assert set(c1.inputs()) >= {"image", "prompt"}
        assert n >= 5


# -------------------------------------------------------------------------------------------- detector
def test_connected_components():
    m = np.zeros((10, 12), bool)
    m[1:4, 1:4] = True
    m[6:9, 2:10] = True
    m[2, 8] = True
    m[5, 11] = m[6, 11] = True  # separate from the bar (which ends at column 9)
    m[9, 1] = True  # diagonal to the bar's corner: 4-connectivity keeps it separate
    lab, n = D.connected_components(m)
    assert n == 5 and set(np.unique(lab)) == set(range(6))
    assert len(np.unique(lab[1:4, 1:4])) == 1 and len(np.unique(lab[6:9, 2:10])) == 1
    snake = np.zeros((20, 20), bool)
    snake[::4, :] = True
    for k, r in enumerate(range(1, 17, 4)):  # a long serpentine: slow for plain propagation
        snake[r:r + 3, -1 if k % 2 == 0 else 0] = True
    lab, n = D.connected_components(snake)
    assert n == 1


def test_detector_finds_every_object_on_200_scenes():
    n_obj = 0
    for seed in range(200):
        s = S.make_scene(10_000 + seed)
        dets = D.detect(s.image(), shapes=False)
        m = D.match(dets, s.objects, s.masks())
        n_obj += len(s.objects)
        assert not m["missed"] and not m["spurious"], (seed, [o.color for o in s.objects], [d["color"] for d in dets])
        for i, j, v, err in m["pairs"]:
            assert dets[j]["color"] == s.objects[i].color
            assert v > 0.75 and err < 0.75
    assert n_obj > 350


def test_detector_robust_to_blur_and_noise_and_guesses_shapes():
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    shape_ok = total = 0
    for seed in range(40):
        s = S.make_scene(20_000 + seed)
        im = Image.fromarray((s.image() * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
        x = np.clip(np.asarray(im, np.float32) / 255 + rng.normal(0, 0.03, (64, 64, 3)), 0, 1)
        dets = D.detect(x)
        m = D.match(dets, s.objects)
        assert not m["missed"] and not m["spurious"]
        for i, j, v, err in m["pairs"]:
            total += 1
            shape_ok += dets[j]["shape_guess"] == s.objects[i].shape
            d = dets[j]
            assert d["area"] == d["mask"].sum() and d["bbox"][0] <= d["centroid"][0] <= d["bbox"][2] + 1
    assert shape_ok / total > 0.9


def test_detector_on_edit_truth_and_empty_scene():
    s = S.make_scene(42)
    case = S.random_edit(s, "move", np.random.default_rng(1))
    dets = D.detect(case.truth_image)
    m = D.match(dets, case.truth.objects)
    assert m["recall"] == 1.0 and m["precision"] == 1.0
    assert D.detect(s.background) == []
    assert D.match([], s.objects)["missed"] == list(range(len(s.objects)))


# --------------------------------------------------------------------------------- scene families
def test_plain_family_is_the_original_benchmark():
    from diffeditor.bench import editbench

    for task in ("move", "paste"):
        a, b = editbench.make_case(task, 3), editbench.make_case(task, 3, "plain")
        assert np.array_equal(a.source_image, b.source_image) and np.array_equal(a.truth_image, b.truth_image)


def test_shadow_and_light_follow_the_object_so_copy_paste_is_wrong():
    from diffeditor.bench import editbench

    case = editbench.make_case("move", 2, "shadow")
    sdx, sdy = case.source.effects.shadow[:2]
    o = case.source.objects[case.index]
    old_shadow = o.replace(cx=o.cx + sdx, cy=o.cy + sdy).mask() & ~case.edit_region
    # where the old shadow fell (and nothing else now covers), the truth is brighter than the source
    assert old_shadow.any()
    assert case.truth_image[old_shadow].mean() > case.source_image[old_shadow].mean() + 0.05
    case = editbench.make_case("move", 5, "light")
    src_rgb = case.source.object_rgb(case.source.objects[case.index])
    new_rgb = case.truth.object_rgb(case.truth.objects[case.truth_index])
    moved = case.source.objects[case.index].rgb.max() < 0.97  # a white object can saturate
    assert not moved or np.abs(src_rgb - new_rgb).max() > 0.01


def test_stripes_continue_into_the_vacated_area_and_occlusion_hides_part_of_an_object():
    from diffeditor.bench import editbench

    case = editbench.make_case("move", 1, "stripes")
    vacated = case.source_mask & ~case.target_mask
    plain_bg = S.with_effects(case.truth, S.Effects()).with_objects([]).image()
    assert np.abs(case.truth_image[vacated] - plain_bg[vacated]).max() > 0.03  # stripes, not a smooth fill
    case = editbench.make_case("move", 4, "occlusion")
    i, j = case.params["i"], case.params["occluder"]
    full = case.truth.objects[i].mask()
    hidden = 1 - case.target_mask.sum() / full.sum()
    if case.params["behind"]:
        assert 0.25 <= hidden <= 0.6
    else:
        assert case.target_mask.sum() == full.sum()  # in front: fully visible, the other one is covered
    with pytest.raises(ValueError, match="family"):
        editbench.make_case("appearance", 0, "occlusion")
