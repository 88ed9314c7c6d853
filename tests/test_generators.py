import pytest

from generators import make_generator, pick_backend
from generators.base import BackendError, SamplingConfig, build_messages
from generators.models import check_model_name, resolve_model


def test_prompt_template_keeps_latex_braces():
    msgs = build_messages("What is 1 + 1?", "sys", [{"question": "Q", "answer": "A"}],
                          "{question}\nPut the answer in \\boxed{}.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "What is 1 + 1?\nPut the answer in \\boxed{}."


def test_unknown_model_alias_lists_known():
    with pytest.raises(BackendError, match=r"unknown model alias 'smol' \(known: smollm2-135m\)"):
        check_model_name("smol")


def test_hub_ids_and_paths_pass_the_name_check(tmp_path):
    check_model_name("Qwen/Qwen2.5-0.5B-Instruct")
    check_model_name(str(tmp_path))
    with pytest.raises(BackendError, match="model path not found"):
        check_model_name("./no/such/model")


def test_unknown_backend_lists_known():
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        pick_backend("tpu")


def test_transformers_backend_samples_n_and_reports_truncation():
    gen = make_generator("transformers", resolve_model("smollm2-135m"), seed=0)
    convs = [build_messages(f"What is {a} + 1?") for a in (1, 2)]
    out = gen.generate(convs, SamplingConfig(n=3, max_tokens=4))
    assert [len(s) for s in out] == [3, 3]
    for samples in out:
        for s in samples:
            assert s.finish_reason == "length" and s.completion_tokens == 4 and s.prompt_tokens > 0
    # given room, the model ends its answer with EOS
    done = gen.generate(convs[:1], SamplingConfig(n=2, max_tokens=200))[0]
    assert any(s.finish_reason == "stop" and s.completion_tokens < 200 for s in done)
