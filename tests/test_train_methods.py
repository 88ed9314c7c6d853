"""distill train's methods on the real embedded model: DPO on pairs, on-policy distillation, masked journeys."""
import pytest
import torch

from tests.conftest import run_cli
from tests.test_dpo import pairs_wh, rows_of  # noqa: F401  (the fixture: literal samples with right and wrong ones)
from distill.errors import ConfigError
from distill.generators.models import resolve_model
from distill.trainers.sft import TrainConfig, match_vocab, sft_example, to_prompt_completion, train
from distill.warehouse.export import export

pytestmark = pytest.mark.slow  # a real model, or the CLI in a subprocess

TINY = dict(max_steps=2, per_device_train_batch_size=2, logging_steps=1, save_steps=100, max_length=64,
            learning_rate=1e-4)


def weights(folder, name="model.layers.0.self_attn.q_proj.weight"):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name).float()


def test_dpo_two_steps_on_pairs_change_the_weights(pairs_wh, tmp_path):  # noqa: F811
    from pathlib import Path

    out = tmp_path / "dpo"
    result = train(TrainConfig(data="warehouse", warehouse=str(pairs_wh), method="dpo", pairs_per_problem=2,
                               output_dir=str(out), **TINY))
    assert result["global_step"] == 2 and result["examples"] == 3 and len(result["losses"]) == 2
    assert not torch.equal(weights(out), weights(Path(resolve_model("smollm2-135m"))))


def test_distill_two_steps_pull_a_student_towards_its_teacher(pairs_wh, tmp_path):  # noqa: F811
    """The embedded model teaches a copy of itself whose last layer was disturbed (same tokenizer, other
    logits): the divergence it trains on is above zero, and the student's weights move."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(resolve_model("smollm2-135m"))
    student = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(0)
    with torch.no_grad():
        w = student.model.layers[-1].mlp.down_proj.weight
        w.add_(torch.randn_like(w) * w.std() * 2)
    student.save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "student")
    out = tmp_path / "d"
    result = train(TrainConfig(data="warehouse", warehouse=str(pairs_wh), method="distill", model=str(tmp_path / "student"),
                               teacher_model="smollm2-135m", max_completion_length=8, output_dir=str(out),
                               **{**TINY, "per_device_train_batch_size": 1}))
    # the prompts of the kept rows, each once: p0, p1, p3
    assert result["global_step"] == 2 and result["examples"] == 3
    assert len(result["losses"]) == 2 and all(loss > 0 for loss in result["losses"]), result["losses"]
    name = "model.layers.29.mlp.down_proj.weight"
    assert not torch.equal(weights(out, name), weights(tmp_path / "student", name))


def test_distill_refuses_a_teacher_with_another_tokenizer(pairs_wh, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    other.add_tokens(["<step>"])
    other.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ConfigError, match=r"does not share the student's tokenizer \(49153 vs 49152 tokens, 1 "):
        train(TrainConfig(data="warehouse", warehouse=str(pairs_wh), method="distill",
                          teacher_model=str(tmp_path / "teacher"), output_dir=str(tmp_path / "d"), **TINY))
    with pytest.raises(ConfigError, match="method distill needs teacher_model"):
        train(TrainConfig(data="warehouse", warehouse=str(pairs_wh), method="distill", output_dir=str(tmp_path / "d")))


def test_a_teacher_with_more_padding_rows_is_cut_to_the_students():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"))
    rows = model.config.vocab_size
    model.resize_token_embeddings(rows + 64)  # as Qwen2.5 7B has more rows than 0.5B for the same tokens
    match_vocab(model, rows, rows)
    assert model.config.vocab_size == rows and model.get_output_embeddings().weight.shape[0] == rows
    with pytest.raises(ConfigError, match="at least as wide as the student"):
        match_vocab(model, rows + 8, rows)


def test_masked_journey_labels_with_the_real_tokenizer(pairs_wh, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    export(pairs_wh, tmp_path / "j", variant="journey", max_wrong=2)
    row = to_prompt_completion(next(r for r in rows_of(tmp_path / "j") if r["problem_id"] == "p0"))
    full, masked = sft_example(row, tok), sft_example(row, tok, masked=True)
    # the ids are those the chat template gives (what TRL's SFTTrainer would train on)
    assert full["input_ids"] == tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                        return_dict=True)["input_ids"]
    ids = full["input_ids"]
    completion = [i for i, label in enumerate(full["labels"]) if label != -100]
    assert full["labels"][completion[0]:] == ids[completion[0]:] and tok.decode(ids[completion[0]:]).startswith("<think>")
    out = [i for i in completion if masked["labels"][i] == -100]
    # exactly the wrong paths' tokens are out; every other completion token keeps its label
    content = row["completion"][0]["content"]
    wrong = "".join(content[s["start"]:s["end"]] for s in row["wrong_spans"])
    assert "".join(tok.decode([ids[i]]) for i in out).replace(" ", "") == wrong.replace(" ", "")
    assert all(masked["labels"][i] == ids[i] for i in completion if i not in out)
    assert "That gives 3" in tok.decode([ids[i] for i in completion if i not in out])


def test_cli_dpo_on_an_sft_export_is_one_line(pairs_wh, tmp_path):  # noqa: F811
    export(pairs_wh, tmp_path / "sft")
    proc = run_cli("train", "recipes/train-default.yaml", "--set", f"data={tmp_path / 'sft'}", "--set", "method=dpo",
                   timeout=120)
    assert proc.returncode == 2 and "method dpo needs preference pairs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
