"""The plain-torch Kaldi fbank (frontends/kaldi_fbank.py) and windowed-sinc resampler (resample.py).

Both replace torchaudio at run time. They are checked against the AST fixtures and, where
torchaudio is installed (the `dev` / `oracle` extras), against torchaudio itself as an oracle:
`torchaudio.compliance.kaldi.fbank` with the AST options and `torchaudio.functional.resample`
with its defaults (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99).

Measured on the 2-core x86 CPU of the project (torch 2.11, torchaudio 2.11), max |ours - theirs|:
- fbank, AST fixtures (raw log-mel and normalised model input): 0.0 (bit-identical);
- fbank vs torchaudio, 10 s clips (metro and noise, batch of 4 computed together): 0.0; short
  clips of 1-4 frames computed as a batch: <= 9.5e-7 (BLAS picks other kernels for the small
  matrices of the batched mel projection; one clip alone is bit-identical); float64: 0.0;
- resampler vs torchaudio, all 7 rate pairs, real audio and short/odd lengths, batched and
  unbatched, float32 and float64: 0.0 for the same input shape; a clip resampled alone vs as a
  row of a batch (conv1d picks another algorithm): <= 1.2e-7;
- streaming (block-wise) resampler vs one call: <= 1.2e-7.
Tolerances below are a few float32 ulps of the values compared, far below what a wrong window,
pre-emphasis edge, epsilon or kernel detail changes (>= 1e-4).
"""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from conftest import FIXTURES, METRO_WAV, REPO, load_fixture, requires_shared
from efficient_tagging.audio import (StreamingResampler, decode_audio, resample, resample_blocks, resampler_context,
                                     resampler_settings)
from efficient_tagging.hardware import cpu_description
from efficient_tagging.frontends.kaldi_fbank import kaldi_fbank, kaldi_fbank_frames, kaldi_mel_banks
from efficient_tagging.frontends.ast_fbank import ASTFbank
from efficient_tagging.resample import resampled_length, sinc_kernel_width, sinc_resample, sinc_resample_kernel

AST_OPTIONS = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                   num_mel_bins=128, dither=0.0, frame_shift=10)
# log-mel values reach |16| (log eps = -15.9): 4e-6 is ~4 float32 ulps there
FBANK_ATOL = 4e-6
RESAMPLE_ATOL = 1e-6  # samples in [-1, 1]
RATE_PAIRS = [(44100, 32000), (44100, 16000), (48000, 32000), (22050, 32000), (8000, 32000), (32000, 16000),
              (16000, 32000)]
AST_CASES = sorted(FIXTURES.glob("ast/fbank_*.pt")) if FIXTURES.is_dir() else []


@pytest.fixture(scope="module")
def metro_44k() -> torch.Tensor:
    if not METRO_WAV.is_file():
        pytest.skip("../shared/data not present")
    samples, rate = decode_audio(METRO_WAV)
    assert rate == 44100
    return torch.from_numpy(samples)


@pytest.fixture(scope="module")
def metro_16k(metro_44k) -> torch.Tensor:
    return sinc_resample(metro_44k, 44100, 16000)


def _oracle_fbank(clips: torch.Tensor, **options) -> torch.Tensor:
    ta = pytest.importorskip("torchaudio")
    return torch.stack([ta.compliance.kaldi.fbank(clip.unsqueeze(0), **options) for clip in clips])


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    return (a - b).abs().max().item() if a.numel() else 0.0


# ---------------------------------------------------------------------------------------
# Kaldi fbank
# ---------------------------------------------------------------------------------------
@requires_shared
@pytest.mark.parametrize("path", AST_CASES, ids=lambda p: p.stem)
def test_fbank_equals_the_ast_fixtures(path):
    """Within the fixture README's tolerance for a torchaudio-based pipeline (atol 1e-5 in normalised
    units). The fixtures were made on an Intel CPU, where ours (and torchaudio) give them bit for bit;
    on an AMD EPYC (family 26) MKL's FFT rounds differently and both give 5.6e-5 on the raw log-mel
    (6.1e-6 normalised). Ours equals torchaudio on the machine that runs the test: checked exactly."""
    case = load_fixture(path)
    waveform = case["waveform"]
    centred = waveform - waveform.mean()  # what the reference dataloader feeds torchaudio
    raw = kaldi_fbank(centred[0], **case["fbank_call_kwargs"])
    assert raw.shape == case["raw_fbank"].shape
    normalised_atol = 1e-5
    raw_atol = normalised_atol * 2 * case["norm_std"]  # the recipe normalises by (x - mean) / (2 std)
    assert _max_abs(raw, case["raw_fbank"]) <= raw_atol, cpu_description()
    oracle = _oracle_fbank(centred, **case["fbank_call_kwargs"])[0]
    assert torch.equal(raw, oracle), (_max_abs(raw, oracle), cpu_description())
    # the complete option dict of the recipe (every Kaldi default spelled out) is accepted too
    assert torch.equal(kaldi_fbank(centred, **case["fbank_all_options"])[0], raw)
    frontend = ASTFbank(target_length=case["target_length"], norm_mean=case["norm_mean"], norm_std=case["norm_std"])
    assert _max_abs(frontend(waveform)[0], case["expected"]) <= normalised_atol, cpu_description()
    assert torch.equal(frontend.raw_fbank(waveform[0]), raw)


def test_fbank_equals_torchaudio_on_real_audio_as_one_batch(metro_16k):
    """A batch of different 10 s clips at once. Measured: 0.0 (hanning and povey)."""
    torch.manual_seed(0)
    clips = torch.stack([metro_16k, 0.5 * metro_16k.flip(0), metro_16k.roll(12345), 0.1 * torch.randn(160000)])
    for window_type in ("hanning", "povey"):
        options = dict(AST_OPTIONS, window_type=window_type)
        ours = kaldi_fbank(clips, **options)
        assert ours.shape == (4, 998, 128) and ours.dtype == torch.float32
        assert _max_abs(ours, _oracle_fbank(clips, **options)) <= FBANK_ATOL
    # a wrong detail is far outside the tolerance: e.g. a periodic Hann window
    assert _max_abs(ours, _oracle_fbank(clips, **dict(AST_OPTIONS, window_type="hamming"))) > 1e-3


def test_fbank_cpu_pieces_do_not_change_the_result(metro_16k, monkeypatch):
    """The CPU splits a batch into cache-sized pieces (a speed choice): any piece size gives the
    one-pass result exactly."""
    import efficient_tagging.frontends.kaldi_fbank as kaldi_module

    clips = torch.stack([metro_16k[:48000], 0.5 * metro_16k[48000:96000].flip(0), metro_16k[:48000].roll(777)])
    monkeypatch.setattr(kaldi_module, "CPU_CHUNK_FRAMES", 10 ** 9)
    one_pass = kaldi_fbank(clips, **AST_OPTIONS)
    for frames in (1, 400, 1024):
        monkeypatch.setattr(kaldi_module, "CPU_CHUNK_FRAMES", frames)
        assert torch.equal(kaldi_fbank(clips, **AST_OPTIONS), one_pass)


@pytest.mark.parametrize("length", [400, 401, 559, 560, 561, 1001, 4799, 16001])
def test_fbank_equals_torchaudio_at_edge_lengths(length):
    """Exactly one frame (400), one sample more, around the second frame (560), odd lengths.
    Measured: <= 9.5e-7 (batched) and 0.0 for each clip alone."""
    generator = torch.Generator().manual_seed(length)
    clips = 0.3 * torch.randn(3, length, generator=generator) + 0.05  # with a DC offset
    expected = _oracle_fbank(clips, **AST_OPTIONS)
    ours = kaldi_fbank(clips, **AST_OPTIONS)
    assert ours.shape == (3, kaldi_fbank_frames(length), 128) == expected.shape
    assert _max_abs(ours, expected) <= FBANK_ATOL
    assert _max_abs(kaldi_fbank(clips[1], **AST_OPTIONS), expected[1]) <= FBANK_ATOL


def test_fbank_float64_stays_float64_and_equals_torchaudio(metro_16k):
    """Measured: 0.0 (the mel filters are built in float32 like the reference's, then cast)."""
    clips = torch.stack([metro_16k[:48000], metro_16k[50000:98000]]).double()
    ours = kaldi_fbank(clips, **AST_OPTIONS)
    assert ours.dtype == torch.float64
    assert _max_abs(ours, _oracle_fbank(clips, **AST_OPTIONS)) <= 1e-10
    # float32 vs float64: the float32 path is a float32 computation, not a cast of something coarser
    assert (kaldi_fbank(clips.float(), **AST_OPTIONS).double() - ours).abs().max() < 1e-3


def test_fbank_silence_hits_the_epsilon_floor_and_other_dtypes_run_in_float32():
    silence = torch.zeros(2, 800)
    assert torch.equal(kaldi_fbank(silence, **AST_OPTIONS),
                       torch.full((2, 3, 128), math.log(torch.finfo(torch.float32).eps)))
    x = 0.2 * torch.randn(2, 1600)
    half = kaldi_fbank(x.half(), **AST_OPTIONS)
    assert half.dtype == torch.float32 and torch.equal(half, kaldi_fbank(x.half().float(), **AST_OPTIONS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = kaldi_fbank(x, **AST_OPTIONS)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, kaldi_fbank(x, **AST_OPTIONS))


def test_fbank_mel_banks_are_kaldis():
    ta = pytest.importorskip("torchaudio")
    expected, _ = ta.compliance.kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = kaldi_mel_banks(128, 512, 16000.0)
    assert banks.shape == (128, 257) and torch.all(banks[:, -1] == 0)
    assert torch.equal(banks[:, :256], expected)


@pytest.mark.parametrize("bad, message", [
    (dict(dither=1.0), "dither"), (dict(snip_edges=False), "snip_edges"), (dict(use_energy=True), "use_energy"),
    (dict(window_type="hamming"), "hamming"), (dict(low_freq=50.0), "low_freq"), (dict(vtln_warp=0.9), "vtln_warp"),
    (dict(preemphasis_coefficient=0.0), "preemphasis"), (dict(num_ceps=13), "unknown option 'num_ceps'"),
    (dict(htk_compat="yes"), "htk_compat"),
])
def test_fbank_refuses_options_it_does_not_implement(bad, message):
    with pytest.raises(ValueError, match=message):
        kaldi_fbank(torch.zeros(1, 800), **dict(AST_OPTIONS, **bad))


def test_fbank_input_errors():
    with pytest.raises(ValueError, match="at least 400 samples"):
        kaldi_fbank(torch.zeros(2, 399), **AST_OPTIONS)
    with pytest.raises(TypeError, match="floating-point"):
        kaldi_fbank(torch.zeros(2, 800, dtype=torch.int16), **AST_OPTIONS)
    with pytest.raises(ValueError, match="num_mel_bins"):
        ASTFbank(num_mel_bins=3)
    assert kaldi_fbank_frames(399) == 0 and kaldi_fbank_frames(400) == 1 and kaldi_fbank_frames(160000) == 998
    assert kaldi_fbank(torch.zeros(0, 800), **AST_OPTIONS).shape == (0, 3, 128)
    assert kaldi_fbank(torch.zeros(2, 0, 800), **AST_OPTIONS).shape == (2, 0, 3, 128)


def test_fbank_supports_autograd_and_leading_axes():
    """With gradients required the in-place shortcuts are skipped; results are the same values."""
    x = (0.2 * torch.randn(2, 3, 1600)).requires_grad_()
    features = kaldi_fbank(x, **AST_OPTIONS)
    features.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(kaldi_fbank(x, **AST_OPTIONS), features)
    assert _max_abs(features[1, 2].detach(), kaldi_fbank(x.detach()[1, 2], **AST_OPTIONS)) <= FBANK_ATOL


def test_astfbank_batch_equals_the_torchaudio_pipeline_clip_by_clip(metro_16k):
    """ASTFbank's public behaviour (mean removal, fbank, pad before normalisation / cut, layouts)
    against the reference pipeline built from torchaudio, for a batch of clips. Measured: 0.0."""
    ta = pytest.importorskip("torchaudio")
    torch.manual_seed(1)
    clips = torch.stack([metro_16k[:100000], 0.3 * torch.randn(100000) + 0.1, 0.7 * metro_16k[-100000:]])
    for target_length, cut_long in ((1024, True), (512, True), (None, True), (300, False)):
        frontend = ASTFbank(target_length=target_length, cut_long=cut_long)
        expected = []
        for clip in clips:
            clip = clip.unsqueeze(0)
            fbank = ta.compliance.kaldi.fbank(clip - clip.mean(), **AST_OPTIONS)
            if target_length is not None and fbank.shape[0] < target_length:
                fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_length - fbank.shape[0]))
            elif target_length is not None and cut_long:
                fbank = fbank[:target_length]
            expected.append((fbank - frontend.norm_mean) / (2 * frontend.norm_std))
        expected = torch.stack(expected)
        ours = frontend(clips)
        assert _max_abs(ours, expected) <= FBANK_ATOL
        assert torch.equal(ASTFbank(target_length=target_length, cut_long=cut_long, layout="b1ft")(clips),
                           ours.transpose(1, 2).unsqueeze(1))
    assert ASTFbank()(torch.zeros(0, 16000)).shape == (0, 1024, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fbank_and_resampler_run_on_the_gpu(metro_44k):
    clips = torch.stack([metro_44k, metro_44k.flip(0)])
    on_gpu = sinc_resample(clips.cuda(), 44100, 16000)
    assert on_gpu.device.type == "cuda"
    assert _max_abs(on_gpu.cpu(), sinc_resample(clips, 44100, 16000)) <= 1e-5
    features = ASTFbank()(on_gpu)
    assert features.device.type == "cuda"
    assert _max_abs(features.cpu(), ASTFbank()(on_gpu.cpu())) <= 1e-3


# ---------------------------------------------------------------------------------------
# resampler
# ---------------------------------------------------------------------------------------
def _oracle_resample(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    ta = pytest.importorskip("torchaudio")
    return ta.functional.resample(waveform, orig, new)


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_resampler_equals_torchaudio_on_real_audio(metro_44k, orig, new):
    """Real audio at `orig` (the 44.1 kHz recording, first brought to `orig`), one clip and a
    batch of three. Measured: 0.0 for every pair (same input shape as torchaudio's call)."""
    source = metro_44k if orig == 44100 else sinc_resample(metro_44k, 44100, orig)
    source = source[: 4 * orig]  # 4 s keeps the oracle quick
    single = sinc_resample(source, orig, new)
    assert single.shape == (resampled_length(source.numel(), orig, new),)
    assert _max_abs(single, _oracle_resample(source, orig, new)) <= RESAMPLE_ATOL
    batch = torch.stack([source, 0.5 * source.flip(0), source.roll(777)])
    ours = sinc_resample(batch, orig, new)
    assert _max_abs(ours, _oracle_resample(batch, orig, new)) <= RESAMPLE_ATOL
    # a row of a batch equals the clip alone within rounding (conv1d may pick another algorithm)
    assert _max_abs(ours[0], single) <= RESAMPLE_ATOL
    assert torch.equal(resample(source.numpy(), orig, new), single)  # the audio.py entry point


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_resampler_equals_torchaudio_at_short_and_odd_lengths(orig, new):
    """Lengths 1 .. 4411, batched (2, 3, n) and unbatched. Measured: 0.0."""
    generator = torch.Generator().manual_seed(orig + new)
    for length in (1, 2, 3, 7, 100, 441, 1001, 4411):
        x = 0.5 * torch.randn(2, 3, length, generator=generator)
        ours = sinc_resample(x, orig, new)
        assert ours.shape == (2, 3, math.ceil(Fraction(length * new, orig)))
        assert _max_abs(ours, _oracle_resample(x, orig, new)) <= RESAMPLE_ATOL
        assert _max_abs(sinc_resample(x[1, 2], orig, new), _oracle_resample(x[1, 2], orig, new)) <= RESAMPLE_ATOL
    # empty inputs (torchaudio cannot reshape a 0-length signal; the length rule gives 0)
    assert sinc_resample(torch.zeros(0), orig, new).shape == (0,)
    assert sinc_resample(torch.zeros(0, 50), orig, new).shape == (0, resampled_length(50, orig, new))


def test_resampler_cpu_pieces_do_not_change_the_result(metro_44k, monkeypatch):
    """The CPU resamples a batch in cache-sized pieces (a speed choice): the same result, bit for bit."""
    from efficient_tagging import resample as resample_module

    signals = torch.stack([metro_44k[:44100], metro_44k[44100:88200].flip(0), 0.3 * metro_44k[:44100]])
    monkeypatch.setattr(resample_module, "CPU_CHUNK_SAMPLES", 10 ** 12)
    one_pass = sinc_resample(signals, 44100, 32000)
    for samples in (1, 44100, 2 * 44100):
        monkeypatch.setattr(resample_module, "CPU_CHUNK_SAMPLES", samples)
        assert torch.equal(sinc_resample(signals, 44100, 32000), one_pass)


def test_resampler_float64_and_dtypes(metro_44k):
    """float64 stays float64 (measured 0.0 vs torchaudio's float64); half runs in float32; autocast is off."""
    x = metro_44k[:44100]
    ours = sinc_resample(x.double(), 44100, 32000)
    assert ours.dtype == torch.float64
    assert _max_abs(ours, _oracle_resample(x.double(), 44100, 32000)) <= 1e-12
    assert (ours - sinc_resample(x, 44100, 32000).double()).abs().max() < 1e-5
    assert sinc_resample(x.half(), 44100, 32000).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sinc_resample(x, 44100, 32000)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, sinc_resample(x, 44100, 32000))
    assert sinc_resample(x, 32000, 32000) is x and torch.equal(resample(x, 44100, 44100), x)
    with pytest.raises(TypeError, match="floating-point"):
        sinc_resample(torch.zeros(10, dtype=torch.int32), 44100, 32000)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 32000)
    with pytest.raises(ValueError, match="integers"):
        sinc_resample(x, 44100.5, 32000)


def test_resampler_kernel_is_cached_and_matches_the_context():
    first, width = sinc_resample_kernel(44100, 32000)
    again, _ = sinc_resample_kernel(441, 320)  # the same reduced rates
    assert again is first and first.shape == (320, 1, 2 * width + 441)
    assert sinc_resample_kernel(44100, 32000, torch.float64)[0].dtype == torch.float64
    assert width == sinc_kernel_width(44100, 32000) == 9
    assert resampler_context(44100, 32000) >= width and resampler_context(44100, 32000) % 441 == 0
    # a symmetric low-pass: the zero-phase filter sums to 1 (unity DC gain)
    assert first[0].sum().item() == pytest.approx(1.0, abs=1e-3)


def test_output_length_is_exact_where_float32_would_round():
    """torchaudio computes ceil(new * n / orig) in float32; beyond 2**24 outputs that rounds (one
    reason the cache settings changed). The length here is the exact integer ceiling."""
    n = 23_068_600  # ~8.7 min at 44.1 kHz
    exact = math.ceil(Fraction(n * 320, 441))
    assert resampled_length(n, 44100, 32000) == exact == 16_739_121
    float32_length = int(torch.ceil(torch.tensor(320 * n / 441, dtype=torch.float32)).item())
    assert float32_length == exact - 1  # what torchaudio's length rule gives: one sample short


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_streaming_resampler_equals_one_call(metro_44k, orig, new):
    """Block-wise resampling (odd block and step sizes) against one call. Measured: <= 1.2e-7."""
    source = (metro_44k if orig == 44100 else sinc_resample(metro_44k, 44100, orig))[: 3 * orig + 123]
    expected = resample(source, orig, new)
    blocks = [source[i:i + 9973] for i in range(0, source.numel(), 9973)]
    resampler = StreamingResampler(orig, new, step_samples=orig // 3 + 1)
    streamed = torch.cat([p for b in blocks for p in resampler.push(b)] + list(resampler.flush()))
    assert _max_abs(streamed, expected) <= RESAMPLE_ATOL
    joined = torch.cat(list(resample_blocks(iter(blocks), orig, new, step_samples=orig)))
    assert _max_abs(joined, expected) <= RESAMPLE_ATOL


def test_resampler_settings_describe_our_resampler():
    settings = resampler_settings()
    assert settings["resampler"] == "efficient_tagging.resample.sinc_resample"
    assert "torchaudio" not in settings and settings["torch"] == torch.__version__.split("+")[0]
    assert (settings["method"], settings["lowpass_filter_width"], settings["rolloff"]) == ("sinc_interp_hann", 6, 0.99)
    # caches made with the torchaudio resampler keyed on this description: they must not match
    old = {"resampler": "torchaudio.functional.resample", "method": "sinc_interp_hann", "lowpass_filter_width": 6,
           "rolloff": 0.99, "torchaudio": "2.11.0"}
    assert settings != old


def _imports_torchaudio(path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(name == "torchaudio" or name.startswith("torchaudio.") for name in names):
            return True
    return False


def test_no_package_module_imports_torchaudio():
    """torchaudio is an optional extra (the test oracle): no module of the package or script imports it."""
    files = [*(REPO / "efficient_tagging").rglob("*.py"), *(REPO / "experiments").rglob("*.py"), REPO / "hubconf.py"]
    offenders = [str(p.relative_to(REPO)) for p in files if p.is_file() and _imports_torchaudio(p)]
    assert not offenders, f"these import torchaudio: {offenders}"


def test_resampling_and_fbank_run_without_torchaudio():
    """With torchaudio made unimportable, the audio floor and the frontends import and compute."""
    code = (
        "import sys\n"
        "sys.modules['torchaudio'] = None\n"  # any `import torchaudio` now raises ImportError
        "import torch\n"
        "from efficient_tagging.audio import resample\n"
        "from efficient_tagging.frontends import ASTFbank\n"
        "x = resample(torch.randn(44100), 44100, 16000)\n"
        "assert ASTFbank()(x.unsqueeze(0)).shape == (1, 1024, 128)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
