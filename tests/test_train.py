"""SFT on the real embedded model: loss goes down, a checkpoint reloads and generates, resume continues."""
import pytest

from tests.conftest import run_cli
import pyarrow.parquet as pq

from tests.test_export import wh_dir  # noqa: F401  (the fixture: a small warehouse of literal traces)
from distill.trainers.sft import TrainConfig, load_train_config, to_prompt_completion, train
from distill.errors import ConfigError
from distill.warehouse.export import export

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess


def test_rows_become_prompt_and_completion():
    row = {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                        {"role": "assistant", "content": "<think>\n1+1=2\n</think>\n\n\\boxed{2}"}]}
    pc = to_prompt_completion(row)
    assert pc["prompt"] == row["messages"][:1] and pc["completion"] == row["messages"][1:]


def test_full_finetune_lowers_loss_then_resumes_and_generates(wh_dir, tmp_path):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    cfg = TrainConfig(data="warehouse", warehouse=str(wh_dir), output_dir=str(out), max_steps=4,
                      per_device_train_batch_size=4, learning_rate=1e-4, logging_steps=1, save_steps=2, max_length=128)
    result = train(cfg)
    assert result["global_step"] == 4 and result["examples"] == 12
    assert result["losses"][-1] < result["losses"][0]
    assert (out / "checkpoint-4").is_dir()
    # the compute a method comparison reports: completion tokens in the loss × epochs (12 rows, 4 steps of 4 = 4/3)
    from distill.trainers.sft import load_rows, sft_example, student
    rows = load_rows(cfg)
    _, tok = student(cfg)
    per_epoch = sum(sum(x != -100 for x in sft_example(r, tok)["labels"][:128]) for r in rows)
    answers = sum(len(tok(r["completion"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert per_epoch >= answers > 0 and result["epochs"] == pytest.approx(4 / 3, abs=1e-3)
    assert result["loss_tokens"] == round(per_epoch * result["epochs"])

    resumed = train(TrainConfig(**{**cfg.__dict__, "max_steps": 6, "resume": True}))
    # the history of steps 1-4 came back from the checkpoint; only steps 5 and 6 were trained
    assert resumed["global_step"] == 6 and resumed["losses"][:4] == result["losses"]

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_lora_saves_an_adapter(wh_dir, tmp_path):  # noqa: F811
    out = tmp_path / "lora"
    result = train(TrainConfig(data="warehouse", warehouse=str(wh_dir), output_dir=str(out), lora=True, max_steps=2,
                               per_device_train_batch_size=4, logging_steps=1, max_length=128))
    assert result["global_step"] == 2 and (out / "adapter_config.json").exists()


def test_unknown_training_key_is_clear(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("lr: 0.1\n")
    path.with_name("empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="unknown key 'learning_rat' — did you mean 'learning_rate'\\?$"):
        load_train_config(path.with_name("empty.yaml"), {"learning_rat": 1})


def test_cli_missing_data_is_one_line(tmp_path):
    proc = run_cli("train", "recipes/train-default.yaml", "--set", f"data={tmp_path / 'none'}", timeout=120)
    assert proc.returncode == 2 and "training data not found" in proc.stderr


def test_two_export_folders_of_the_same_name_give_their_own_rows(wh_dir, tmp_path):  # noqa: F811
    from distill.trainers.sft import TrainConfig, load_rows

    export(wh_dir, tmp_path / "a" / "data", where="problem_id = 'p0'")
    export(wh_dir, tmp_path / "b" / "data")
    for folder in (tmp_path / "a" / "data", tmp_path / "b" / "data"):
        expected = pq.read_metadata(folder / "data" / "train-00000-of-00001.parquet").num_rows
        assert len(load_rows(TrainConfig(data=str(folder)))) == expected


def test_a_learning_rate_yaml_read_as_text_is_a_clear_error(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match="write 1.0e-5: YAML reads 1e-5 as text"):
        load_train_config(path)
