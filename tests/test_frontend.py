"""AugmentMelSTFT against the EfficientAT/PaSST reference fixtures, plus train-mode augmentation."""
import pytest
import torch

from conftest import fixture_files, load_fixture, requires_shared
from efficient_tagging import AugmentMelSTFT
from efficient_tagging.frontends.mel import kaldi_mel_filterbank

MEL_FIXTURES = fixture_files("mel_efficientat", "mel_passt")


@requires_shared
@pytest.mark.parametrize("path", MEL_FIXTURES, ids=[p.stem for p in MEL_FIXTURES])
def test_eval_output_matches_reference(path):
    fx = load_fixture(path)
    frontend = AugmentMelSTFT(**fx["config"]).eval()
    with torch.no_grad():
        output = frontend(fx["input"])
    assert output.shape == fx["output"].shape
    torch.testing.assert_close(output, fx["output"], **fx["meta"]["tolerance"])
    if "effective_fmax" in fx["meta"]:
        assert frontend.fmax == pytest.approx(fx["meta"]["effective_fmax"])


def test_mel_fixtures_were_found():
    if not MEL_FIXTURES:
        pytest.skip("no shared fixtures")
    assert {load_fixture(p)["kind"] for p in MEL_FIXTURES} == {"mel_efficientat", "mel_passt"}


def test_default_fmax_differs_between_efficientat_and_passt_argument_sets():
    assert AugmentMelSTFT().fmax == 15000
    assert AugmentMelSTFT(fmin_aug_range=1, fmax_aug_range=1000, htk=False, norm=1).fmax == 15500


def test_frame_count_and_state_dict_is_empty():
    frontend = AugmentMelSTFT(hopsize=480, n_mels=64).eval()
    waveform = torch.randn(2, 32000)
    assert frontend(waveform).shape == (2, 64, frontend.num_frames(32000)) == (2, 64, 67)
    assert frontend.state_dict() == {}  # reference checkpoints carry no frontend state


def test_filterbank_shape_and_triangles():
    banks = kaldi_mel_filterbank(n_mels=8, n_fft=512, sample_rate=16000, fmin=0.0, fmax=8000.0)
    assert banks.shape == (8, 257)
    assert torch.all(banks[:, -1] == 0)  # Nyquist column appended as zeros
    assert banks.max() <= 1.0 and banks.min() >= 0.0
    peaks = banks.argmax(dim=1)
    assert torch.all(peaks[1:] > peaks[:-1])  # centres increase with the filter index


def test_train_mode_masks_and_jitters_but_eval_is_deterministic():
    torch.manual_seed(0)
    waveform = torch.randn(4, 32000)
    frontend = AugmentMelSTFT(freqm=20, timem=30)
    frontend.eval()
    reference = frontend(waveform)
    assert torch.equal(reference, frontend(waveform))
    frontend.train()
    augmented = frontend(waveform)
    assert augmented.shape == reference.shape
    assert not torch.allclose(augmented, reference)
    masked_value = (0.0 + 4.5) / 5.0  # masks zero the log-mel before normalisation
    assert (augmented == masked_value).any()
    # masks are drawn per example
    masks = [(augmented[i] == masked_value) for i in range(4)]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize("train", [False, True])
def test_cpu_pieces_give_the_one_pass_result_and_the_same_random_draws(train, monkeypatch):
    """The CPU computes a batch's spectra in cache-sized pieces (a speed choice): eval output bit for
    bit the one-pass output, and in training the same filterbank jitter and masks for the same seed."""
    from efficient_tagging.frontends import mel

    waveform = torch.randn(5, 8000, generator=torch.Generator().manual_seed(3))
    frontend = AugmentMelSTFT(freqm=20, timem=10).train(train)
    monkeypatch.setattr(mel, "CPU_CHUNK_SAMPLES", 10 ** 9)
    torch.manual_seed(1)
    one_pass = frontend(waveform)
    after_one_pass = torch.rand(1)
    for samples in (1, 8000, 16000):
        monkeypatch.setattr(mel, "CPU_CHUNK_SAMPLES", samples)
        torch.manual_seed(1)
        assert torch.equal(frontend(waveform), one_pass)
        assert torch.equal(torch.rand(1), after_one_pass)  # no extra or missing draws


def test_frequency_range_jitter_without_masks():
    torch.manual_seed(1)
    waveform = torch.randn(1, 32000)
    frontend = AugmentMelSTFT(freqm=0, timem=0)
    frontend.train()
    outputs = [frontend(waveform) for _ in range(4)]
    assert any(not torch.allclose(outputs[0], o) for o in outputs[1:])
    frontend_no_jitter = AugmentMelSTFT(freqm=0, timem=0, fmin_aug_range=1, fmax_aug_range=1)
    frontend_no_jitter.train()
    assert torch.equal(frontend_no_jitter(waveform), frontend_no_jitter.eval()(waveform))


@pytest.mark.parametrize("shape", [(32000,), (2, 1, 32000)])
def test_bad_waveform_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        AugmentMelSTFT()(torch.zeros(shape))


def test_invalid_frequency_range_is_rejected():
    with pytest.raises(ValueError, match="fmin"):
        AugmentMelSTFT(fmin=16000, fmax=15000)


@pytest.mark.parametrize("axis,max_width", [(1, 48), (2, 192), (1, 7), (2, 1)])
def test_iid_masks_equal_torchaudio_for_the_same_random_draws(axis, max_width):
    """Band placement and widths equal torchaudio's iid masking (what EfficientAT runs) draw for draw."""
    import torchaudio

    from efficient_tagging.frontends.mel import _iid_mask

    spec = torch.randn(512, 128, 250) + 3.0  # no exact zeros: every masked cell is visible
    masker = (torchaudio.transforms.FrequencyMasking(max_width, iid_masks=True) if axis == 1
              else torchaudio.transforms.TimeMasking(max_width, iid_masks=True))
    for seed in range(5):
        torch.manual_seed(seed)
        ours = _iid_mask(spec, max_width, axis=axis)
        torch.manual_seed(seed)
        reference = masker(spec)
        assert torch.equal(ours == 0, reference == 0)
    # the width distribution: floor(U * m), so 0 .. m - 1 and never m
    torch.manual_seed(0)
    masked = _iid_mask(spec, max_width, axis=axis) == 0
    widths = masked.any(dim=3 - axis).sum(dim=1)
    assert int(widths.max()) <= max_width - 1
    assert abs(widths.float().mean().item() - (max_width - 1) / 2) < 0.1 * max_width + 0.2


def test_train_mode_masks_follow_torchaudio_frequency_then_time():
    """AugmentMelSTFT's train-mode masks: frequency mask first, then time mask, same draws as torchaudio."""
    import torchaudio

    mel = AugmentMelSTFT(freqm=20, timem=40, fmin_aug_range=1, fmax_aug_range=1).train()
    waveform = torch.randn(16, 32000)
    torch.manual_seed(3)
    ours = mel(waveform)
    plain = AugmentMelSTFT(freqm=0, timem=0, fmin_aug_range=1, fmax_aug_range=1).train()
    log_mel = plain(waveform) * 5.0 - 4.5  # undo the normalisation: masks act on the log-mel
    torch.manual_seed(3)
    log_mel = torchaudio.transforms.FrequencyMasking(20, iid_masks=True)(log_mel)
    log_mel = torchaudio.transforms.TimeMasking(40, iid_masks=True)(log_mel)
    masked_value = (0.0 + 4.5) / 5.0
    assert torch.equal(ours == masked_value, log_mel == 0)


@requires_shared
def test_the_in_graph_frontend_stays_equal_to_augment_mel_stft():
    """`GraphMelFrontend` (what ONNX waveform exports compute: float64 STFT) beside `AugmentMelSTFT`:
    the same log-mel within float32 rounding on real audio (measured 1.2e-6 at the 32 kHz defaults),
    for the catalogue and the demo settings; a changed detail (pre-emphasis) is far outside."""
    from conftest import metro_long
    from efficient_tagging.frontends.mel import GraphMelFrontend

    for settings, rate in (({}, 32000), ({"n_mels": 64, "sr": 16000}, 16000)):
        frontend = AugmentMelSTFT(**settings).eval()
        audio = torch.stack([metro_long(10, sample_rate=rate), 0.01 * metro_long(10, sample_rate=rate).flip(0)])
        with torch.no_grad():
            expected, graph = frontend(audio), GraphMelFrontend(frontend)(audio)
        assert graph.shape == expected.shape and graph.dtype == torch.float32
        assert float((graph - expected).abs().max()) <= 1e-5
    changed = audio.clone()
    changed[:, 1:] = audio[:, 1:] - 0.02 * audio[:, :-1]  # as if the pre-emphasis were 0.99
    with torch.no_grad():
        assert float((GraphMelFrontend(frontend)(changed) - expected).abs().max()) > 1e-3
