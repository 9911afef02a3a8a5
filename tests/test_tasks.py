"""Edit specs -> feature-grid / latent geometry, start latents, point parsing and validation (CPU, fast)."""
import pytest
import torch

from diffeditor.guidance.geometry import (AppearanceGeometry, DragGeometry, Geometry, MoveGeometry, PasteGeometry,
                                          paste_reference)
from diffeditor.guidance.grids import centroid, resize_mask, shift_no_wrap, to_grid, to_latent
from diffeditor.guidance.specs import (AppearanceSpec, DragSpec, MoveSpec, PasteSpec, parse_points, points_text,
                                       validate_spec)
from diffeditor.guidance.tasks import make_task

LAT = (16, 16)  # latent cells -> 128x128 pixels, 32x32 feature grid


def box(y0, y1, x0, x1, H=128, W=128):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = 1.0
    return m


def grid_centroid_px(m):
    ys, xs = torch.nonzero(m, as_tuple=True)
    return (xs.double().mean().item() + 0.5) * 4, (ys.double().mean().item() + 0.5) * 4


# ------------------------------------------------------------------------------------------------- move
def test_moved_mask_equals_shifted_mask_and_source_correspondence():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), dx=24, dy=-16), LAT)
    assert g.shift_px == (24, -16)
    expected = shift_no_wrap(g.m_org, -4, 6)
    assert torch.equal(g.m_cur, expected)
    # a pure translation keeps raster order: the j-th moved cell shows the j-th object cell
    assert torch.equal(g.src_index, torch.nonzero(g.m_org.flatten()).flatten())
    assert torch.equal(g.m_ovl, g.m_cur & g.m_org)
    assert torch.equal(g.m_no, g.m_org & ~g.m_cur)
    assert torch.equal(g.m_other, ~(g.m_org | g.m_cur))
    assert torch.equal(g.m_ref, g.m_other)
    assert torch.equal(g.m_edit, to_latent(expected))
    assert torch.equal(g.sde_mask, torch.maximum(to_latent(expected), to_latent(g.m_org)))


def test_edited_region_frees_the_cells_a_moved_object_leaves():
    """The background lock holds everything outside ``edited_region``: for a move that must include where the
    object was (else the lock keeps a copy of it there), for the other tasks it is the edit region."""
    z = torch.zeros(1, 4, *LAT)
    move = make_task(MoveSpec(box(32, 64, 40, 72), dx=32, dy=0), z)
    org, dest = to_latent(move.geometry.m_org), move.edit_mask
    assert torch.equal(move.edited_region, torch.maximum(org, dest))
    assert bool((org > dest).any())  # cells the object leaves are free, though not in the edit region
    shrink = make_task(MoveSpec(box(32, 64, 40, 72), 0, 0, scale=0.5), z)
    assert torch.equal(shrink.edited_region, to_latent(shrink.geometry.m_org))  # the old outline is free
    drag = make_task(DragSpec([((40, 40), (56, 40))], box(16, 80, 16, 100)), z)
    assert torch.equal(drag.edited_region, drag.edit_mask)


def test_displacement_rounds_to_whole_latent_cells_in_one_frame():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), dx=13, dy=3), LAT)
    assert g.shift_px == (16, 0)  # 13 px -> 2 latent cells; masks and latent use the same shift
    assert torch.equal(g.m_cur, shift_no_wrap(g.m_org, 0, 4))
    z = torch.randn(1, 4, *LAT)
    out = g.init_latent(z)
    m = g.m_edit[0, 0] > 0
    assert torch.equal(out[..., m], shift_no_wrap(z, 0, 2)[..., m])


@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_resize_about_object_centre_keeps_centroid(scale):
    mask = box(32, 64, 24, 56)  # off-centre object (centroid (40, 48) px, image centre (64, 64))
    cx, cy = centroid(mask > 0.5)
    g = MoveGeometry.build(MoveSpec(mask, 0, 0, scale=scale), LAT)
    gx, gy = grid_centroid_px(g.m_cur)
    assert abs(gx - cx) <= 2.0 and abs(gy - cy) <= 2.0
    assert abs(g.m_cur.sum().item() / g.m_org.sum().item() - scale ** 2) < 0.25 * scale ** 2
    assert torch.equal(g.m_tar, g.m_cur)  # no shift: the resized object is where the moved one is
    # with a shift the centroid moves by exactly the displacement
    g2 = MoveGeometry.build(MoveSpec(mask, 32, 16, scale=scale), LAT)
    gx2, gy2 = grid_centroid_px(g2.m_cur)
    assert abs(gx2 - gx - 32) < 1e-6 and abs(gy2 - gy - 16) < 1e-6


def test_move_off_canvas_raises_naming_dx_dy():
    with pytest.raises(ValueError, match=r"dx=200.*dy=0"):
        MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), dx=200, dy=0), LAT)
    with pytest.raises(ValueError, match=r"dy=-90"):
        MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), dx=0, dy=-90), LAT)


def test_no_wrap_around_content_is_cut():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 96, 128), dx=16, dy=0), LAT)  # object touches the right edge
    assert g.m_cur.sum() < g.m_org.sum()  # part of the object left the canvas ...
    assert not g.m_cur[:, :8].any()  # ... and did not reappear on the left
    assert g.m_cur[:, 28:].any()
    z = torch.randn(1, 4, *LAT)
    out = g.init_latent(z)
    assert torch.equal(out[..., :, :12], z[..., :, :12])
    m = g.m_edit[0, 0] > 0
    assert torch.equal(out[..., m], shift_no_wrap(z, 0, 2)[..., m])


def test_move_start_latent_pastes_shifted_region_only():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), dx=-16, dy=24), LAT)
    z = torch.randn(2, 4, *LAT)
    out = g.init_latent(z)
    m = g.m_edit[0, 0] > 0
    assert torch.equal(out[..., ~m], z[..., ~m])
    # latent rows 4..8 / cols 5..9 of the object moved by (+3 rows, -2 cols)
    assert torch.equal(out[..., 7:11, 3:7], z[..., 4:8, 5:9])


def test_move_resize_start_latent_is_nearest_about_centroid():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 32, 64), 0, 0, scale=2.0), LAT)  # centroid (48, 48) px
    z = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)
    out = g.init_latent(z)
    # latent cell centred at (44, 44) px comes from (48 + (44-48)/2) = 46 px -> cell 5; (52 -> 50 -> cell 6)
    assert out[0, 0, 5, 5] == z[0, 0, 5, 5] and out[0, 0, 6, 6] == z[0, 0, 6, 6]
    assert out[0, 0, 2, 2] == z[0, 0, 4, 4]  # centre 20 px -> 34 px -> cell 4
    assert g.m_edit[0, 0, 2:10, 2:10].all()


def test_move_reference_mask_and_validation():
    g = MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), 16, 0, ref_mask=box(0, 16, 0, 128)), LAT)
    assert torch.equal(g.m_ref, to_grid(box(0, 16, 0, 128) > 0.5))
    with pytest.raises(ValueError, match="move mask is empty"):
        MoveGeometry.build(MoveSpec(torch.zeros(128, 128), 8, 0), LAT)
    with pytest.raises(ValueError, match=r"move mask is 64x128 pixels.*128x128"):
        MoveGeometry.build(MoveSpec(torch.ones(128, 64), 8, 0), LAT)
    with pytest.raises(ValueError, match="scale"):
        MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), 8, 0, scale=0), LAT)
    with pytest.raises(ValueError, match="too small"):
        MoveGeometry.build(MoveSpec(box(33, 34, 33, 34), 8, 0), LAT)
    with pytest.raises(ValueError, match="move reference mask is empty"):
        MoveGeometry.build(MoveSpec(box(32, 64, 40, 72), 8, 0, ref_mask=torch.zeros(128, 128)), LAT)
    g = MoveGeometry.build(MoveSpec(box(32, 64, 40, 72)[None], 8, 0), LAT)  # ComfyUI MASK [1, H, W]
    with pytest.raises(ValueError, match=r"z_T is \(8, 8\)"):
        g.init_latent(torch.randn(1, 4, 8, 8))


# ------------------------------------------------------------------------------------------------- drag
def test_drag_x_clipped_with_width_on_wide_image():
    lat = (8, 32)  # 64 x 256 pixels, feature grid 16 x 64
    g = DragGeometry.build(DragSpec([((250.0, 10.0), (100.0, 62.0))]), lat)
    h_rows, h_cols = g.handle_index[0] // 64, g.handle_index[0] % 64
    assert h_cols.tolist() == [61, 62, 63] * 3  # clipped to gw - 2 = 62 (the official bug gives gh - 2 = 14)
    assert h_rows.tolist() == [1] * 3 + [2] * 3 + [3] * 3
    t_rows, t_cols = g.target_index[0] // 64, g.target_index[0] % 64
    assert sorted(set(t_rows.tolist())) == [13, 14, 15]  # y clipped with the height
    assert sorted(set(t_cols.tolist())) == [24, 25, 26]
    assert g.latent_handle.tolist() == [[1, 30]] and g.latent_target.tolist() == [[6, 12]]
    # tall image: y clipped with the height (gh - 2), x with the width
    g2 = DragGeometry.build(DragSpec([((60.0, 250.0), (4.0, 4.0))]), (32, 8))
    rows, cols = g2.handle_index[0] // 16, g2.handle_index[0] % 16
    assert sorted(set(rows.tolist())) == [61, 62, 63] and sorted(set(cols.tolist())) == [13, 14, 15]


def test_drag_start_latent_copies_handle_patch_to_target():
    g = DragGeometry.build(DragSpec([((20.0, 20.0), (90.0, 60.0)), ((100.0, 100.0), (100.0, 30.0))]), LAT)
    z = torch.randn(1, 4, *LAT)
    out = g.init_latent(z)
    assert g.latent_handle.tolist() == [[2, 2], [12, 12]] and g.latent_target.tolist() == [[7, 11], [3, 12]]
    assert torch.equal(out[..., 6:9, 10:13], z[..., 1:4, 1:4])
    assert torch.equal(out[..., 2:5, 11:14], z[..., 11:14, 11:14])
    keep = torch.ones(*LAT, dtype=torch.bool)
    keep[6:9, 10:13] = False
    keep[2:5, 11:14] = False
    assert torch.equal(out[..., keep], z[..., keep])


def test_drag_masks():
    g = DragGeometry.build(DragSpec([((20.0, 20.0), (40.0, 20.0))], mask=box(0, 64, 0, 64)), LAT)
    assert g.m_editable[:16, :16].all() and not g.m_editable[16:].any() and not g.m_editable[:, 16:].any()
    assert torch.equal(g.m_other, ~g.m_editable)
    assert torch.equal(g.m_edit, g.sde_mask) and g.m_edit.sum() == 64
    assert g.patch_mask("handle").sum() == 9 and g.patch_mask("target").sum() == 9
    g0 = DragGeometry.build(DragSpec([((20.0, 20.0), (40.0, 20.0))]), LAT)
    assert g0.m_edit.all() and not g0.m_other.any()
    with pytest.raises(ValueError, match="outside the 128x128 image"):
        DragGeometry.build(DragSpec([((20.0, 20.0), (128.0, 20.0))]), LAT)
    with pytest.raises(ValueError, match="^points: give at least one"):
        DragGeometry.build(DragSpec([]), LAT)


# ------------------------------------------------------------------------------------------ parse_points
def test_parse_points_ok_and_errors():
    assert parse_points(" 10,20 -> 30,40 ;(1.5, 2)->(3,4)\n5,6->7,8 ", 64, 64) == [
        ((10.0, 20.0), (30.0, 40.0)), ((1.5, 2.0), (3.0, 4.0)), ((5.0, 6.0), (7.0, 8.0))]
    for bad in ["10,20", "10,20->30", "a,b->c,d", "10 20 -> 30 40", "1,2->3,4; 5,6=>7,8", ""]:
        with pytest.raises(ValueError, match="points"):
            parse_points(bad, 64, 64)
    with pytest.raises(ValueError, match=r"pair 2 target \(64, 3\) lies outside the 64x64 image"):
        parse_points("1,2->3,4; 1,2->64,3", 64, 64)
    with pytest.raises(ValueError, match="outside"):
        parse_points("-1,2->3,4", 64, 64)
    assert parse_points("100,2->3,4") == [((100.0, 2.0), (3.0, 4.0))]  # no size: no bounds check
    with pytest.raises(ValueError, match="handle equal to its target"):
        parse_points("5,5->5,5")


# ------------------------------------------------------------------------------------- appearance/paste
def test_appearance_geometry():
    g = AppearanceGeometry.build(AppearanceSpec(box(32, 64, 32, 64), box(64, 128, 0, 64)), LAT)
    assert torch.equal(g.m_b, to_grid(box(32, 64, 32, 64) > 0.5))
    assert torch.equal(g.m_r, to_grid(box(64, 128, 0, 64) > 0.5))
    assert torch.equal(g.m_edit, to_latent(g.m_b)) and torch.equal(g.sde_mask, g.m_edit)
    assert torch.equal(g.ref_mask_latent, to_latent(g.m_r))
    z = torch.randn(1, 4, *LAT)
    out = g.init_latent(z)
    assert torch.equal(out, z) and out is not z
    with pytest.raises(ValueError, match="appearance reference mask"):
        AppearanceGeometry.build(AppearanceSpec(box(32, 64, 32, 64), torch.ones(64, 64)), LAT)


def test_paste_geometry_and_start_latent():
    g = PasteGeometry.build(PasteSpec(box(16, 48, 16, 48), dx=40, dy=64), LAT)
    assert g.shift_px == (40, 64)
    assert torch.equal(g.m_b, shift_no_wrap(to_grid(box(16, 48, 16, 48) > 0.5), 16, 10))
    assert torch.equal(g.m_r, shift_no_wrap(g.m_b, -16, -10))
    assert g.m_b.sum() == g.m_r.sum()
    z, zr = torch.randn(1, 4, *LAT), torch.randn(1, 4, *LAT)
    out = g.init_latent(z, zr)
    m = g.m_edit[0, 0] > 0
    assert torch.equal(out[..., ~m], z[..., ~m])
    assert torch.equal(out[..., 10:14, 7:11], zr[..., 2:6, 2:6])
    # cut at the border, no wrap; m_r keeps only the cells that landed
    g2 = PasteGeometry.build(PasteSpec(box(16, 48, 16, 48), dx=96, dy=0), LAT)
    assert g2.m_b.sum() == g2.m_r.sum() < to_grid(box(16, 48, 16, 48) > 0.5).sum()
    assert not g2.m_b[:, :20].any()
    with pytest.raises(ValueError, match=r"dx=200"):
        PasteGeometry.build(PasteSpec(box(16, 48, 16, 48), dx=200, dy=0), LAT)
    with pytest.raises(ValueError, match="ref_z_T"):
        g.init_latent(z, None)


def test_paste_scale_about_object_centre_and_reference_image():
    mask = box(16, 48, 16, 48)
    g = PasteGeometry.build(PasteSpec(mask, dx=0, dy=0, scale=0.5), LAT)
    assert g.m_r.sum() == 16 and g.m_r[6:10, 6:10].all()  # 32 px object -> 16 px about (32, 32)
    img = torch.zeros(1, 1, 128, 128)
    img[..., 16:48, 16:48] = 1.0
    out = g.reference_image(img)
    assert out[0, 0, 26:38, 26:38].min() > 0.99 and out[0, 0, :22].abs().max() < 1e-6
    assert PasteGeometry.build(PasteSpec(mask), LAT).reference_image(img) is img


# ------------------------------------------------------------------------------------------- task object
def test_make_task_protocol_and_weights():
    t = make_task(MoveSpec(box(32, 64, 40, 72), 16, 0), torch.zeros(1, 4, *LAT), w_inpaint=0.5)
    assert t.weights == dict(w_edit=4.0, w_content=6.0, w_contrast=0.2, w_inpaint=0.5)
    assert t.edit_mask.shape == (1, 1, *LAT) and t.sde_mask.shape == (1, 1, *LAT)
    assert t.reference is None and t.ref_mask_latent is None and t.edit_first
    with pytest.raises(ValueError, match=r"not \['w_contrast'\]"):
        make_task(PasteSpec(box(16, 48, 16, 48)), LAT, w_contrast=1.0)
    with pytest.raises(ValueError, match="w_edit"):
        make_task(PasteSpec(box(16, 48, 16, 48)), LAT, w_edit=-1.0)
    ta = make_task(AppearanceSpec(box(32, 64, 32, 64), box(0, 32, 0, 32)), LAT)
    assert not ta.edit_first and torch.equal(ta.ref_mask_latent, ta.geometry.m_r_latent)


# ------------------------------------------------------------------------------ other VAE factors (demo: 4)
def test_pixels_per_latent_4_equals_the_upsampled_spec_on_the_canonical_frame():
    small = box(16, 32, 20, 36, 64, 64)  # 64x64 image, 16x16 latent (4 px per latent cell)
    t4 = make_task(MoveSpec(small, dx=12, dy=-8), LAT, pixels_per_latent=4)
    t8 = make_task(MoveSpec(box(32, 64, 40, 72), dx=24, dy=-16), LAT)
    g4, g8 = t4.geometry, t8.geometry
    assert g4.shift_px == g8.shift_px == (24, -16)  # in the canonical 8-px frame
    for name in ("m_org", "m_cur", "m_other", "m_edit", "sde_mask", "src_index"):
        assert torch.equal(getattr(g4, name), getattr(g8, name)), name
    # drag points and paste/appearance masks scale the same way
    d4 = make_task(DragSpec([((20.0, 24.0), (30.0, 24.0))], mask=small), LAT, pixels_per_latent=4).geometry
    d8 = make_task(DragSpec([((40.0, 48.0), (60.0, 48.0))], mask=box(32, 64, 40, 72)), LAT).geometry
    for name in ("m_edit", "handle_index", "target_index", "latent_handle", "latent_target"):
        assert torch.equal(getattr(d4, name), getattr(d8, name)), name
    a4 = make_task(AppearanceSpec(small, small), LAT, pixels_per_latent=4).geometry
    assert torch.equal(a4.m_edit, make_task(AppearanceSpec(box(32, 64, 40, 72), box(32, 64, 40, 72)),
                                            LAT).geometry.m_edit)
    p4 = make_task(PasteSpec(small, dx=4, dy=4), LAT, pixels_per_latent=4).geometry
    assert p4.shift_px == (8, 8)


def test_pixels_per_latent_validation_names_the_input():
    with pytest.raises(ValueError, match="pixels_per_latent must be 1, 2, 4 or 8"):
        make_task(MoveSpec(box(16, 32, 20, 36, 64, 64), 8, 0), LAT, pixels_per_latent=3)
    # a 64x64 mask is the wrong size for a 16x16 latent at the default 8 px per cell
    with pytest.raises(ValueError, match="must be 128x128 pixels"):
        make_task(MoveSpec(box(16, 32, 20, 36, 64, 64), 8, 0), LAT)


# ------------------------------------------------------------------------------ spec API (front-end plug-in)
def test_points_json_and_text_round_trip():
    pairs = parse_points("10,20->30,40; 1.5,2->3,4", 64, 64)
    assert parse_points(points_text(pairs), 64, 64) == pairs
    assert parse_points("[[[10, 20], [30, 40]], [[1.5, 2], [3, 4]]]", 64, 64) == pairs
    assert parse_points('[{"handle": [10, 20], "target": [30, 40]}]') == pairs[:1]
    for bad, msg in (("[[1, 2]]", "pair 1 must be"), ("[1, 2", "not valid JSON"), ("[]", "at least one"),
                     ('{"handle": [1, 1], "target": [1, 1]}', "handle equal")):
        with pytest.raises(ValueError, match=f"^points: .*{msg}"):
            parse_points(bad)


def test_validate_spec_against_the_image_size_names_the_field():
    m = box(32, 64, 40, 72)
    validate_spec(MoveSpec(m, 8, 0, ref_mask=m), (128, 128))
    validate_spec(DragSpec([((1.0, 2.0), (3.0, 4.0))], mask=m), (128, 128))
    validate_spec(PasteSpec(m, 4, 4, 0.5), (128, 128))
    for spec, msg in ((MoveSpec(m, 8, 0), r"^mask is 128x128 pixels .*must be 64x64"),
                      (MoveSpec(box(0, 64, 0, 64, 64, 64), 8, 0, ref_mask=m), "^ref_mask is 128x128"),
                      (MoveSpec(box(0, 64, 0, 64, 64, 64), float("nan"), 0), "^dx must be finite"),
                      (AppearanceSpec(box(0, 64, 0, 64, 64, 64), m), "^ref_mask"),
                      (PasteSpec(box(0, 64, 0, 64, 64, 64), 0, 0, 0.0), "^scale must be"),
                      (DragSpec([((1.0, 2.0), (70.0, 4.0))]), r"^points: pair 1 target \(70, 4\) lies outside")):
        with pytest.raises(ValueError, match=msg):
            validate_spec(spec, (64, 64))
    with pytest.raises(ValueError, match="spec must be"):
        validate_spec("move", (64, 64))
    with pytest.raises(ValueError, match="unknown edit spec type"):
        Geometry.of("move", LAT)


def test_resize_mask_is_the_one_helper_and_matches_the_old_operations():
    import torch.nn.functional as F

    m = (torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert torch.equal(resize_mask(m, (8, 8), "majority"), F.avg_pool2d(m, 4) >= 0.5)
    assert torch.equal(resize_mask(m, (16, 16), "any"), F.max_pool2d(m, 2))
    assert torch.equal(resize_mask(m, (96, 96), "nearest"),
                       m.repeat_interleave(3, dim=-2).repeat_interleave(3, dim=-1))
    assert torch.equal(resize_mask(m[0, 0], (7, 5), "area"), F.interpolate(m, size=(7, 5), mode="area"))
    assert resize_mask(m, (32, 32), "nearest") is m
    with pytest.raises(ValueError, match="resize mode"):
        resize_mask(m, (8, 8), "bicubic")
    with pytest.raises(ValueError, match="does not pool evenly"):
        resize_mask(m, (5, 5), "any")


def test_paste_reference_rescales_image_and_mask_together():
    """The reference image and its object mask are rescaled about the object's centroid by the same call,
    and a PasteSpec with ``scale`` builds its masks from that call: one engine path for the scale."""
    mask = box(16, 48, 24, 56)  # 32x32 px object, centroid (40, 32)
    img = torch.zeros(1, 3, 128, 128)
    img[..., 16:48, 24:56] = 1.0
    for scale in (0.5, 1.5):
        out, m = paste_reference(img, mask, scale)
        assert abs(float(m.sum()) / float((mask > 0.5).sum()) - scale ** 2) < 0.05
        assert abs(float((out[0, 0] > 0.5).sum()) / 1024 - scale ** 2) < 0.05
        assert abs(centroid(m)[0] - 40.0) < 0.6 and abs(centroid(m)[1] - 32.0) < 0.6
        g = PasteGeometry.build(PasteSpec(mask, dx=0, dy=0, scale=scale), LAT)
        assert torch.equal(g.m_b, to_grid(m))  # the spec's scale == the pre-scaled mask at scale 1
        assert torch.equal(g.m_b, PasteGeometry.build(PasteSpec(m.float(), 0, 0), LAT).m_b)
    # channels-last (ComfyUI IMAGE) gives the same pixels
    out_cl, _ = paste_reference(img.permute(0, 2, 3, 1), mask, 0.5, channels_last=True)
    assert torch.equal(out_cl.permute(0, 3, 1, 2), paste_reference(img, mask, 0.5)[0])
    assert paste_reference(img, mask, 1.0)[0] is img
    with pytest.raises(ValueError, match="shrinks the object"):
        paste_reference(None, box(16, 18, 16, 18), 0.1)
    with pytest.raises(ValueError, match="reference image is 64x64 pixels but mask is 128x128"):
        paste_reference(torch.zeros(1, 3, 64, 64), mask, 0.5)
