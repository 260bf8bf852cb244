"""The streaming merge, the safetensors reader and writer, and the tar stream, in process."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tuneyard.complete.archive import tar_size, tar_stream
from tuneyard.complete.merge import (
    merge_adapter_into_base,
    plan_merge,
    read_adapter,
    write_model_files,
)
from tuneyard.complete.safetensors_io import PlannedTensor, SafetensorsWriter, read_header
from tuneyard.errors import Invalid

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb


def nonzero_lora(peft_model, seed: int = 0) -> None:
    """LoRA B starts at zero; give it values so a merge changes the weights."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def make_adapter(base_dir: Path, out: Path, **lora) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**lora))
    nonzero_lora(peft_model)
    peft_model.save_pretrained(out)
    return out


def merge(base_dir: Path, adapter_dir: Path, out: Path, dtype="fp32", **plan_kwargs) -> Path:
    plan = plan_merge(base_dir, read_adapter(adapter_dir), dtype, **plan_kwargs)
    out.mkdir()
    merge_adapter_into_base(plan, out, lambda _fraction, _message: None)
    write_model_files(base_dir, adapter_dir, out, dtype)
    return out


def assert_equals_peft(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> None:
    """Every weight exactly as PEFT's merge_and_unload computes it, in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()
    mine = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).state_dict()
    assert sorted(mine) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.allclose(mine[name], tensor, rtol=0, atol=1e-6), name


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2: Conv1D layers store weights transposed (fan_in_fan_out LoRA)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    out = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


class TestMergeEqualsPeft:
    def test_rslora_with_rank_and_alpha_patterns(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(
            tiny_model_dir,
            tmp_path / "adapter",
            r=8,
            lora_alpha=16,
            target_modules="all-linear",
            use_rslora=True,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"q_proj": 3},
        )
        pairs = read_adapter(adapter).pairs
        assert pairs["model.layers.0.self_attn.v_proj.weight"].scale == 16 / 2**0.5
        assert pairs["model.layers.0.self_attn.q_proj.weight"].scale == 3 / 8**0.5
        assert_equals_peft(tiny_model_dir, adapter, merge(tiny_model_dir, adapter, tmp_path / "m"))

    def test_fan_in_fan_out_conv1d(self, gpt2_dir, tmp_path):
        adapter = make_adapter(
            gpt2_dir, tmp_path / "adapter", r=4, target_modules=["c_attn"], fan_in_fan_out=True
        )
        assert_equals_peft(gpt2_dir, adapter, merge(gpt2_dir, adapter, tmp_path / "m"))

    def test_output_files_split_at_the_cap(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(
            tiny_model_dir, tmp_path / "adapter", r=4, target_modules="all-linear"
        )
        out = merge(tiny_model_dir, adapter, tmp_path / "m", max_shard_bytes=200_000)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        files = sorted(p.name for p in out.glob("model-*.safetensors"))
        assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
        sizes = [sum(i.nbytes for i in read_header(out / name)[0].values()) for name in files]
        embedding = 49152 * 64 * 4  # alone in its file: a tensor is never split
        assert all(size <= 200_000 or size == embedding for size in sizes)
        assert index["metadata"]["total_size"] == sum(sizes)
        assert_equals_peft(tiny_model_dir, adapter, out)

    def test_fp16_that_overflows_is_refused(self, tiny_model_dir, tmp_path):
        import torch
        from safetensors.torch import load_file, save_file

        base = shutil.copytree(tiny_model_dir, tmp_path / "base")
        weights = load_file(base / "model.safetensors")
        weights["model.norm.weight"][0] = 1e6
        save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
        adapter = make_adapter(base, tmp_path / "adapter", r=4, target_modules=["q_proj"])
        with pytest.raises(Invalid) as raised:
            merge(base, adapter, tmp_path / "m", dtype="fp16")
        assert raised.value.message == (
            "The merged weight model.norm.weight is not finite: the values do not fit "
            "float16; save as bf16 or fp32."
        )
        assert torch.isfinite(weights["model.norm.weight"]).all()


class TestModelFiles:
    def test_config_says_the_saved_dtype_and_drops_quantization(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", r=4, target_modules=["q_proj"])
        out = merge(tiny_model_dir, adapter, tmp_path / "m", dtype="bf16")
        config = json.loads((out / "config.json").read_text())
        assert config["dtype"] == "bfloat16"
        assert {i.dtype for i in read_header(out / "model.safetensors")[0].values()} == {"BF16"}
        # The adapter folder has no tokenizer: the base's is taken, template included.
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes()

    def test_adapter_tokenizer_wins(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", r=4, target_modules=["q_proj"])
        config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
        (adapter / "tokenizer_config.json").write_text(json.dumps({**config, "marker": 1}))
        shutil.copyfile(tiny_model_dir / "tokenizer.json", adapter / "tokenizer.json")
        out = merge(tiny_model_dir, adapter, tmp_path / "m")
        assert json.loads((out / "tokenizer_config.json").read_text())["marker"] == 1
        # The adapter's tokenizer came without a chat template: the base's is added.
        assert (out / "chat_template.jinja").is_file()


class TestRefusals:
    def test_embedding_lora(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["embed_tokens"])
        with pytest.raises(Invalid, match="LoRA on the embedding layer model.embed_tokens"):
            read_adapter(adapter)

    def test_lora_on_lm_head_with_its_weights_copied(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["lm_head"])
        with pytest.raises(Invalid) as raised:
            read_adapter(adapter)
        assert raised.value.message.startswith(
            "The adapter carries a full copy of lm_head (PEFT saves one when LoRA targets the "
            "embeddings or lm_head), which save does not merge."
        )

    def test_lora_on_a_tied_lm_head(self, tiny_model_dir, tmp_path):
        from safetensors.torch import load_file, save_file

        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["lm_head"])
        weights = load_file(adapter / "adapter_model.safetensors")
        del weights["base_model.model.lm_head.base_layer.weight"]
        save_file(weights, adapter / "adapter_model.safetensors")
        with pytest.raises(Invalid) as raised:
            plan_merge(tiny_model_dir, read_adapter(adapter), "bf16")
        assert raised.value.message.startswith(
            "The adapter has LoRA on lm_head, which this base model ties to its input "
            "embeddings (tie_word_embeddings)"
        )

    def test_dora_goes_to_peft(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(
            tiny_model_dir, tmp_path / "a", r=4, target_modules=["q_proj"], use_dora=True
        )
        assert read_adapter(adapter).method == "peft"

    def test_a_missing_factor(self, tiny_model_dir, tmp_path):
        from safetensors.torch import load_file, save_file

        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["q_proj"])
        weights = load_file(adapter / "adapter_model.safetensors")
        del weights["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
        weights["base_model.model.model.layers.0.extra"] = weights[next(iter(weights))].clone()
        save_file(weights, adapter / "adapter_model.safetensors")
        with pytest.raises(Invalid, match="holds tensor 'base_model.model.model.layers.0.extra'"):
            read_adapter(adapter)
        del weights["base_model.model.model.layers.0.extra"]
        save_file(weights, adapter / "adapter_model.safetensors")
        with pytest.raises(Invalid) as raised:
            read_adapter(adapter)
        assert raised.value.message == (
            "The adapter has no lora_B weight for model.layers.0.self_attn.q_proj: it is damaged."
        )

    def test_quantized_base(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["q_proj"])
        base = shutil.copytree(tiny_model_dir, tmp_path / "base")
        config = json.loads((base / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "bitsandbytes"}
        (base / "config.json").write_text(json.dumps(config))
        with pytest.raises(Invalid) as raised:
            plan_merge(base, read_adapter(adapter), "bf16")
        assert raised.value.message == (
            "The base model's weights are quantized (bitsandbytes); save merges into an "
            "unquantized base, and saving never quantizes."
        )

    def test_base_without_safetensors(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["q_proj"])
        base = shutil.copytree(tiny_model_dir, tmp_path / "base")
        (base / "model.safetensors").rename(base / "pytorch_model.bin")
        with pytest.raises(Invalid, match="has no safetensors weights"):
            plan_merge(base, read_adapter(adapter), "bf16")

    def test_truncated_base(self, tiny_model_dir, tmp_path):
        adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=4, target_modules=["q_proj"])
        base = shutil.copytree(tiny_model_dir, tmp_path / "base")
        weights = base / "model.safetensors"
        with weights.open("r+b") as handle:
            handle.truncate(weights.stat().st_size - 10)
        with pytest.raises(Invalid, match="model.safetensors is truncated or damaged: tensor"):
            plan_merge(base, read_adapter(adapter), "bf16")


class TestSafetensorsWriter:
    def test_mixed_dtypes_round_trip(self, tmp_path):
        import torch
        from safetensors.torch import load_file

        tensors = {
            "half": (torch.randn(3, 5).to(torch.bfloat16), "BF16"),
            "flag": (torch.tensor([True, False, True]), "BOOL"),
            "ids": (torch.arange(7, dtype=torch.int64), "I64"),
            "empty": (torch.zeros(0, 4), "F32"),
            "scalar": (torch.tensor(2.5), "F32"),
        }
        planned = [PlannedTensor(n, dtype, tuple(t.shape)) for n, (t, dtype) in tensors.items()]
        path = tmp_path / "mixed.safetensors"
        with SafetensorsWriter(path, planned, {"format": "pt"}) as writer:
            assert [t.name for t in writer.order] == ["ids", "empty", "scalar", "half", "flag"]
            for item in writer.order:
                writer.write(item.name, tensors[item.name][0])
        loaded = load_file(path)
        assert loaded.keys() == tensors.keys()
        for name, (tensor, _dtype) in tensors.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
        assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0
        assert read_header(path)[1] == {"format": "pt"}

    def test_a_file_with_tensors_missing_is_an_error(self, tmp_path):
        import torch

        planned = [PlannedTensor("a", "F32", (2,)), PlannedTensor("b", "F32", (2,))]
        writer = SafetensorsWriter(tmp_path / "x.safetensors", planned, {})
        writer.write("a", torch.zeros(2))
        with pytest.raises(ValueError, match="1 tensors unwritten"):
            writer.close()


class TestTarStream:
    def test_round_trip_with_nested_empty_and_long_names(self, tmp_path):
        folder = tmp_path / "model"
        (folder / "sub").mkdir(parents=True)
        (folder / "weights.bin").write_bytes(bytes(range(256)) * 5000)
        (folder / "empty.txt").write_bytes(b"")
        long_name = "n" * 150 + ".json"
        (folder / "sub" / long_name).write_text("{}")
        for fmt in ("tar", "tar.gz"):
            data = b"".join(tar_stream(folder, "my-model", fmt))
            if fmt == "tar":
                assert len(data) == tar_size(folder, "my-model")
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                names = archive.getnames()
                assert names == [
                    "my-model",
                    "my-model/empty.txt",
                    "my-model/sub",
                    f"my-model/sub/{long_name}",
                    "my-model/weights.bin",
                ]
                read = archive.extractfile("my-model/weights.bin").read()
                assert read == (folder / "weights.bin").read_bytes()
                assert archive.extractfile(f"my-model/sub/{long_name}").read() == b"{}"

    def test_chunks_stay_small(self, tmp_path):
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "big.bin").write_bytes(b"\1" * (5 * 1024 * 1024 + 3))
        assert max(len(chunk) for chunk in tar_stream(folder, "m")) <= 1024 * 1024
