"""`tuneyard image` against a real server: register a model, generate (following the job and
saving the PNGs), again with the same seed, list and show."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["image", *args])


@pytest.mark.slow
def test_model_add_generate_again_list_show(cli, worker, tiny_sd_dir, tmp_path):
    added = invoke("model", "add", "tiny-sd", str(tiny_sd_dir))
    assert added.exit_code == 0, added.output
    assert "StableDiffusionPipeline" in added.stdout
    listed = json.loads(invoke("model", "list", "--json").stdout)
    assert [model["name"] for model in listed] == ["tiny-sd"]

    out = tmp_path / "out"
    made = invoke(
        "generate", "a red square", "-m", "tiny-sd", "--steps", "2", "--seed", "11",
        "--width", "32", "--height", "32", "-o", str(out), "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    [image] = json.loads(made.stdout)
    first = out / f"{image['id']}.png"
    assert first.is_file()

    again = invoke("generate", "--again", image["id"], "-o", str(out), "--json")
    assert again.exit_code == 0, again.output
    [copy] = json.loads(again.stdout)
    assert copy["recipe"] == image["recipe"]
    from PIL import Image

    with Image.open(first) as one, Image.open(out / f"{copy['id']}.png") as two:
        assert one.tobytes() == two.tobytes()

    rows = json.loads(invoke("list", "--json").stdout)
    assert {row["id"] for row in rows} == {image["id"], copy["id"]}
    shown = invoke("show", image["id"], "--save", str(tmp_path / "saved.png"))
    assert shown.exit_code == 0, shown.output
    assert "a red square" in shown.stdout
    assert (tmp_path / "saved.png").read_bytes() == first.read_bytes()

    bad = invoke("generate", "x", "-m", "tiny-sd", "--width", "33", "--height", "32")
    assert bad.exit_code == 1
    assert "width 33 is not a multiple of 2" in bad.output


def test_generate_grounded_names_its_knowledge_bases(cli, tiny_sd_dir):
    assert invoke("model", "add", "tiny-sd", str(tiny_sd_dir)).exit_code == 0
    refused = invoke("generate", "a lighthouse", "-m", "tiny-sd", "--kb", "no-such-base")
    assert refused.exit_code == 1
    assert "No knowledge base 'no-such-base'" in refused.output
    alone = invoke("generate", "a lighthouse", "-m", "tiny-sd", "--grounding-tokens", "20")
    assert alone.exit_code == 1
    assert "give knowledge_base_ids with it" in alone.output


@pytest.mark.slow
def test_train_zips_a_folder_and_waits_for_the_adapter(cli, worker, tiny_sd_dir, tmp_path):
    from PIL import Image

    assert invoke("model", "add", "tiny-sd", str(tiny_sd_dir)).exit_code == 0
    folder = tmp_path / "squares"
    folder.mkdir()
    for name, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        Image.new("RGB", (32, 32), color).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a {name} square")
    missing = invoke("train", "tiny-sd", str(tmp_path / "nowhere"), "--name", "squares")
    assert missing.exit_code == 1
    assert "Cannot read" in missing.output

    trained = invoke(
        "train", "tiny-sd", str(folder), "--name", "squares", "--steps", "2",
        "--resolution", "32", "--wait", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    adapter = json.loads(trained.stdout)
    assert adapter["name"] == "squares"
    assert (adapter["card"]["steps"], adapter["card"]["images"]) == (2, 2)
    listed = json.loads(invoke("adapter", "list", "tiny-sd", "--json").stdout)
    assert [row["id"] for row in listed] == [adapter["id"]]
