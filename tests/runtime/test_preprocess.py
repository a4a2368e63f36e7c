"""Preprocessing is pure numpy (+ OpenCV or Pillow): tested without any model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_opencv

from edgecls.errors import ConfigError, ImageError
from edgecls.model.preprocess import InputSpec, PreprocessConfig, Preprocessor, build_lut, dequantize, quantize

CORAL_SPEC = InputSpec(224, 224, 3, "uint8", scale=1 / 128, zero_point=128)
ENGINES = [pytest.param("opencv", marks=needs_opencv), "pillow"]


def gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), (xx + yy) % 256], axis=-1).astype(np.uint8)


def test_uint8_coral_input_is_fed_raw_pixels():
    lut = build_lut(CORAL_SPEC, PreprocessConfig())
    assert lut.dtype == np.uint8 and np.array_equal(lut[:, 0], np.arange(256))


def test_int8_input_uses_the_model_scale_and_zero_point():
    spec = InputSpec(8, 8, 3, "int8", scale=1.0, zero_point=-128)  # what edgecls convert produces
    lut = build_lut(spec, PreprocessConfig(mean=0.0, std=1.0))
    assert lut.dtype == np.int8
    assert lut[0, 0] == -128 and lut[255, 0] == 127 and lut[128, 0] == 0
    spec2 = InputSpec(8, 8, 3, "int8", scale=0.0078125, zero_point=0)  # real = (p - 127.5) / 127.5 model
    lut2 = build_lut(spec2, PreprocessConfig(mean=127.5, std=127.5))
    expected = np.clip(np.round((np.arange(256) - 127.5) / 127.5 / 0.0078125), -128, 127)
    assert np.array_equal(lut2[:, 0].astype(int), expected.astype(int))


def test_float_input_default_is_minus_one_to_one_and_per_channel_mean_std():
    spec = InputSpec(8, 8, 3, "float32")
    lut = build_lut(spec, PreprocessConfig())
    assert lut.dtype == np.float32 and lut[0, 0] == -1.0 and lut[255, 0] == 1.0
    lut = build_lut(spec, PreprocessConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)))
    assert lut[0].tolist() == pytest.approx([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375])


def test_quantize_dequantize_round_trip():
    values = np.array([-1.0, 0.0, 0.5, 0.99])
    q = quantize(values, 1 / 128, 0, "int8")
    assert q.tolist() == [-128, 0, 64, 127]
    assert dequantize(q, 1 / 128, 0).tolist() == pytest.approx([-1.0, 0.0, 0.5, 127 / 128])


@pytest.mark.parametrize("engine", ENGINES)
def test_bgr_and_rgb_frames_give_the_same_input(engine):
    rgb = gradient(48, 64)
    pre = Preprocessor(InputSpec(16, 16, 3, "uint8", 1 / 128, 128), engine=engine)
    a = pre.to_array(rgb, color="rgb")
    b = pre.to_array(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr")
    assert np.array_equal(a, b)


@pytest.mark.parametrize("engine", ENGINES)
def test_rgba_gray_and_single_channel_frames(engine):
    rgb = gradient(32, 32)
    pre = Preprocessor(InputSpec(16, 16, 3, "uint8", 1 / 128, 128), engine=engine)
    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    assert np.array_equal(pre.to_array(rgba), pre.to_array(rgb))
    gray = rgb[:, :, 0].copy()
    out = pre.to_array(gray)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
    assert np.array_equal(pre.to_array(gray[:, :, None]), out)


@pytest.mark.parametrize("engine", ENGINES)
def test_grayscale_model_converts_colour_frames(engine):
    pre = Preprocessor(InputSpec(8, 8, 1, "uint8", 1 / 255, 0), engine=engine)
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 1] = 200  # pure green: luma 0.587 * 200 = 117
    out = pre.to_array(frame)
    assert out.shape == (8, 8, 1)
    assert abs(int(out[0, 0, 0]) - 117) <= 1
    assert np.array_equal(pre.to_array(np.ascontiguousarray(frame[:, :, ::-1]), color="bgr"), out)


@needs_opencv
def test_opencv_and_pillow_engines_agree():
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    frame = (frame // 2 + gradient(480, 640) // 2).astype(np.uint8)
    for mode in ("squash", "center-crop", "letterbox"):
        for interpolation in ("bilinear", "nearest"):
            config = PreprocessConfig(resize=mode, interpolation=interpolation)
            a = Preprocessor(CORAL_SPEC, config, engine="opencv").to_array(frame).astype(int)
            b = Preprocessor(CORAL_SPEC, config, engine="pillow").to_array(frame).astype(int)
            diff = np.abs(a - b)
            assert np.mean(diff) < 0.6, (mode, interpolation, np.mean(diff))
            assert np.percentile(diff, 99) <= 2, (mode, interpolation)


@pytest.mark.parametrize("engine", ENGINES)
def test_center_crop_keeps_the_middle_and_letterbox_pads(engine):
    spec = InputSpec(10, 10, 3, "uint8", 1 / 128, 128)
    frame = np.zeros((10, 30, 3), np.uint8)
    frame[:, 10:20] = 200  # a bright square in the middle third
    crop = Preprocessor(spec, PreprocessConfig(resize="center-crop"), engine=engine).to_array(frame)
    assert crop.min() == 200
    box = Preprocessor(spec, PreprocessConfig(resize="letterbox", pad_value=7), engine=engine).to_array(frame)
    # 30x10 fits as 10x3 (rounded): pad rows above and below keep the pad value
    assert (box[0] == 7).all() and (box[-1] == 7).all()
    assert box[5, 5].tolist() == [200, 200, 200]


@pytest.mark.parametrize("engine", ENGINES)
def test_int8_and_float_outputs_follow_the_table(engine):
    frame = gradient(40, 40)
    u8 = Preprocessor(InputSpec(20, 20, 3, "uint8", 1 / 128, 128), engine=engine).to_array(frame)
    i8 = Preprocessor(InputSpec(20, 20, 3, "int8", 1.0, -128), PreprocessConfig(mean=0, std=1), engine=engine)
    assert np.array_equal(i8.to_array(frame).astype(int), u8.astype(int) - 128)
    f32 = Preprocessor(InputSpec(20, 20, 3, "float32"), engine=engine).to_array(frame)
    assert f32.dtype == np.float32 and np.allclose(f32, (u8.astype(np.float32) - 127.5) / 127.5)
    odd = Preprocessor(InputSpec(20, 20, 3, "uint8", 0.5, 10), PreprocessConfig(mean=0, std=1), engine=engine)
    assert np.array_equal(odd.to_array(frame), np.clip(np.round(u8 / 0.5) + 10, 0, 255).astype(np.uint8))


def test_writes_into_a_given_buffer_without_reallocating():
    pre = Preprocessor(CORAL_SPEC)  # OpenCV where installed, else Pillow
    out = np.zeros((224, 224, 3), np.uint8)
    pre(gradient(480, 640), out)
    assert out.any()
    expected = pre.to_array(gradient(480, 640))
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "HxWx3"),
        (np.zeros((2, 8, 8, 3), np.uint8), "HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        ([[1, 2], [3, 4]], "numpy"),
    ],
)
def test_bad_frames_are_clear_errors(frame, message):
    with pytest.raises(ImageError, match=message):
        Preprocessor(CORAL_SPEC).to_array(frame)


def test_bad_configuration_is_rejected_with_the_value():
    with pytest.raises(ConfigError, match="'stretch'"):
        PreprocessConfig(resize="stretch")
    with pytest.raises(ConfigError, match="both mean and std"):
        PreprocessConfig(mean=1.0)
    with pytest.raises(ConfigError, match="unknown preprocessing key"):
        PreprocessConfig.from_dict({"resize": "squash", "colour": "rgb"})
    with pytest.raises(ConfigError, match="'area' needs OpenCV"):
        Preprocessor(CORAL_SPEC, PreprocessConfig(interpolation="area"), engine="pillow")
    with pytest.raises(ImageError, match="'rgba'"):
        Preprocessor(CORAL_SPEC).to_array(gradient(8, 8), color="rgba")
