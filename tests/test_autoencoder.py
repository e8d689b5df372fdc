"""Autoencoder: shapes, posterior, gradients, overfitting, save/load, LDM KL-f8 loading, identity twin."""

import math

import pytest
import torch
from safetensors.torch import save_file

from phmdiff.ae_loss import ae_loss
from phmdiff.autoencoder import (
    LDM_KL_F8,
    AE_presets,
    AutoencoderConfig,
    AutoencoderKL,
    DiagonalGaussianDistribution,
    IdentityAutoencoder,
    build_autoencoder,
    compute_latent_scale,
    load_autoencoder,
    load_ldm_kl_f8,
    save_autoencoder,
)

SMALL = dict(num_res_blocks=1, norm_num_groups=4, mid_attention=True)


def _cfg(factor: int, **kw) -> AutoencoderConfig:
    levels = int(math.log2(factor)) + 1
    return AutoencoderConfig(channels=(8, 16, 16, 16)[:levels], attention_levels=(False,) * (levels - 1) + (True,),
                             downsample_factor=factor, **{**SMALL, **kw})


@pytest.mark.parametrize("factor", [4, 8])
def test_shapes_for_factors_4_and_8(factor):
    model = build_autoencoder(_cfg(factor, in_channels=2, latent_channels=3))
    x = torch.randn(2, 2, 32, 48)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 3, 32 // factor, 48 // factor) == posterior.logvar.shape
    recon, post = model(x)
    assert recon.shape == x.shape and post.sample().shape == posterior.mean.shape
    assert model.downsample_factor == factor and model.latent_channels == 3 and model.in_channels == 2
    assert float(model.latent_scale) == 1.0 and "latent_scale" in model.state_dict()
    with pytest.raises(ValueError, match=f"divisible by {factor}"):
        model.encode(torch.randn(1, 2, 30, 32))


def test_presets_and_config_errors():
    assert {"tiny", "f4", "f8"} <= set(AE_presets)
    assert build_autoencoder("f4").downsample_factor == 4
    with torch.device("meta"):
        assert build_autoencoder("f8").downsample_factor == 8
    assert isinstance(build_autoencoder("identity"), IdentityAutoencoder)
    with pytest.raises(ValueError, match="needs 4 entries"):
        AutoencoderConfig(channels=(8, 16, 16), attention_levels=(False,) * 3, downsample_factor=8)
    with pytest.raises(ValueError, match="4 or 8"):
        AutoencoderConfig(downsample_factor=2)
    with pytest.raises(ValueError, match="Unknown autoencoder preset"):
        build_autoencoder("f16")


def test_posterior_kl_closed_form_and_sampling():
    zeros = torch.zeros(3, 4, 2, 2)
    assert torch.equal(DiagonalGaussianDistribution(zeros, zeros).kl(), torch.zeros(3))
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    post = DiagonalGaussianDistribution(mean, logvar)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    assert torch.allclose(post.kl(), ref, atol=1e-5)
    assert torch.equal(post.mode(), mean)
    draws = DiagonalGaussianDistribution(torch.full((20000,), 2.0)[:, None], torch.full((20000, 1), math.log(0.25)))
    s = draws.sample(torch.Generator().manual_seed(1))
    assert abs(float(s.mean()) - 2.0) < 0.02 and abs(float(s.std()) - 0.5) < 0.02
    a = post.sample(torch.Generator().manual_seed(5))
    assert torch.equal(a, post.sample(torch.Generator().manual_seed(5)))
    assert float(DiagonalGaussianDistribution(zeros, torch.full_like(zeros, -100.0)).logvar.min()) == -30.0


def test_gradients_reach_every_parameter():
    model = build_autoencoder(_cfg(4))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    recon, posterior = model(x, generator=torch.Generator().manual_seed(0))
    ae_loss(recon, x, posterior, beta=1e-3)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _phantom_batch(n=4, size=16):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    imgs = []
    for i in range(n):
        r = 0.3 + 0.1 * i
        imgs.append(torch.where(xx**2 + (yy - 0.1 * i) ** 2 < r**2, 0.6 - 0.2 * i, -0.8) + 0.2 * xx)
    return torch.stack(imgs)[:, None]  # (N, 1, H, W)


def test_tiny_autoencoder_overfits_one_batch():
    torch.manual_seed(0)
    model = build_autoencoder("tiny")
    x = _phantom_batch()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        start = float((model(x, sample_posterior=False)[0] - x).abs().mean())
    for _ in range(120):
        recon, posterior = model(x)
        loss = ae_loss(recon, x, posterior, beta=1e-6)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        recon, _ = model(x, sample_posterior=False)
    end = float((recon - x).abs().mean())
    assert end < 0.1 and end < start / 4, (start, end)


def test_save_load_round_trip_and_refusals(tmp_path):
    model = build_autoencoder(_cfg(4))
    model.latent_scale.fill_(0.37)
    path = tmp_path / "ae.safetensors"
    save_autoencoder(model, path)
    loaded = load_autoencoder(path)
    assert loaded.cfg == model.cfg and float(loaded.latent_scale) == pytest.approx(0.37)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(loaded.decode(loaded.encode(x).mode()), model.decode(model.encode(x).mode()))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    partial = dict(tensors)
    del partial["encoder.conv_in.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"missing: encoder\.conv_in\.weight"):
        load_autoencoder(tmp_path / "partial.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match="not a PHMDiff autoencoder"):
        load_autoencoder(tmp_path / "nometa.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_autoencoder(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="not found"):
        load_autoencoder(tmp_path / "absent.safetensors")


def _ldm_state_dict(ch=32, mult=(1, 2, 4, 4), z=4, in_ch=3, res=2):
    """A KL-f8 state dict written out by hand from the LDM layout (names and shapes), independent of our modules."""
    sd = {}

    def conv(name, cin, cout, k):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.randn(cout, cin, k, k) * 0.05, torch.zeros(cout)

    def norm(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.ones(c), torch.zeros(c)

    def resblock(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def mid(prefix, c):
        resblock(f"{prefix}.mid.block_1", c, c)
        norm(f"{prefix}.mid.attn_1.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{p}", c, c, 1)
        resblock(f"{prefix}.mid.block_2", c, c)

    conv("encoder.conv_in", in_ch, ch, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(res):
            resblock(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i < len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin)
    conv("encoder.conv_out", cin, 2 * z, 3)
    conv("decoder.conv_in", z, cin, 3)
    mid("decoder", cin)
    for i in reversed(range(len(mult))):
        for j in range(res + 1):
            resblock(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin)
    conv("decoder.conv_out", cin, in_ch, 3)
    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    return sd


def test_ldm_kl_f8_architecture_matches_stable_diffusion_size():
    with torch.device("meta"):
        model = AutoencoderKL(LDM_KL_F8)
    assert sum(p.numel() for p in model.parameters()) == 83_653_863  # the SD / LDM kl-f8 VAE
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "latent_scale"}
    assert ours == _ldm_key_shapes(128)


def _ldm_key_shapes(ch):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in _ldm_state_dict(ch=ch).items()}


def test_load_ldm_kl_f8_from_pth_and_safetensors(tmp_path):
    cfg = AutoencoderConfig(in_channels=3, latent_channels=4, channels=(32, 64, 128, 128), num_res_blocks=2,
                            attention_levels=(False,) * 4, mid_attention=True, norm_num_groups=32,
                            downsample_factor=8)
    sd = _ldm_state_dict(ch=32)
    full = {"state_dict": {**{f"first_stage_model.{k}": v for k, v in sd.items()},
                           "model.diffusion_model.x.weight": torch.zeros(1), "loss.logvar": torch.zeros(())}}
    torch.save(full, tmp_path / "model.ckpt")
    save_file(sd, str(tmp_path / "autoencoder_kl.safetensors"))
    for name in ("model.ckpt", "autoencoder_kl.safetensors"):
        model = load_ldm_kl_f8(tmp_path / name, cfg)
        assert torch.equal(model.encoder.down[1].block[0].nin_shortcut.weight,
                           sd["encoder.down.1.block.0.nin_shortcut.weight"])
        assert torch.equal(model.decoder.up[3].upsample.conv.weight, sd["decoder.up.3.upsample.conv.weight"])
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        recon, post = model(x, sample_posterior=False)
        assert post.mean.shape == (1, 4, 4, 4) and recon.shape == x.shape
    partial = {k: v for k, v in sd.items() if not k.startswith("post_quant_conv")}
    torch.save(partial, tmp_path / "autoencoder_kl.pth")
    with pytest.raises(ValueError, match=r"2 weight\(s\) are missing: post_quant_conv\.weight, post_quant_conv\.bias"):
        load_ldm_kl_f8(tmp_path / "autoencoder_kl.pth", cfg)
    with pytest.raises(ValueError, match=r"wrong shape.*encoder\.conv_in\.weight \(32, 3, 3, 3\) \(expected \(128, 3"):
        load_ldm_kl_f8(tmp_path / "model.ckpt")  # the full-size KL-f8 wants ch=128 weights
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the weights"):
        load_ldm_kl_f8(tmp_path / "bad.pth", cfg)


def test_identity_autoencoder_and_latent_scale(tmp_path):
    ae = IdentityAutoencoder(in_channels=2)
    x = torch.randn(3, 2, 8, 8)
    post = ae.encode(x)
    assert torch.equal(post.sample(), x) and torch.equal(post.mode(), x) and torch.equal(ae.decode(x), x)
    assert torch.equal(post.std, torch.zeros_like(x)) and torch.equal(post.kl(), torch.zeros(3))
    assert ae.downsample_factor == 1 and ae.latent_channels == 2
    data = [2.0 * torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(i)) + 1 for i in range(3)]
    scale = compute_latent_scale(ae, data)
    assert scale == pytest.approx(1 / float(torch.cat(data).double().std()), rel=1e-9)
    ae.latent_scale.fill_(scale)
    save_autoencoder(ae, tmp_path / "id.safetensors")
    again = load_autoencoder(tmp_path / "id.safetensors")
    assert isinstance(again, IdentityAutoencoder) and float(again.latent_scale) == pytest.approx(scale)
    kl_model = build_autoencoder(_cfg(4))
    batches = [torch.randn(2, 1, 16, 16)]
    with torch.no_grad():
        expected = 1 / float(kl_model.encode(batches[0]).sample(torch.Generator().manual_seed(3)).double().std())
    assert compute_latent_scale(kl_model, batches, torch.Generator().manual_seed(3)) == pytest.approx(expected)
