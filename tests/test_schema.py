from distill.warehouse.schema import SCHEMA, from_table, make_trace_id, sampling_json, split_think, to_table


def test_split_think_closed():
    assert split_think("<think> a </think> \\boxed{2}") == ("a", "\\boxed{2}")


def test_split_think_never_closed_is_all_reasoning():
    assert split_think("<think>still thinking") == ("still thinking", "")


def test_split_think_without_think_is_all_answer():
    assert split_think("just 2") == ("", "just 2")


def test_split_think_close_without_open():
    # Some chat templates put <think> in the prompt: the completion starts inside the block.
    assert split_think("reasoning</think>2") == ("reasoning", "2")


def test_trace_id_is_deterministic_and_sensitive():
    s = sampling_json({"temperature": 0.6, "n": 4})
    assert s == sampling_json({"n": 4, "temperature": 0.6})
    p = [{"role": "user", "content": "What is 1 + 1?"}]
    a = make_trace_id(p, "m", s, 0)
    assert a == make_trace_id([dict(m) for m in p], "m", {"temperature": 0.6, "n": 4}, 0)
    others = {make_trace_id(p, "m", s, 1), make_trace_id([{"role": "user", "content": "What is 1 + 2?"}], "m", s, 0),
              make_trace_id(p, "m2", s, 0), make_trace_id(p, "m", {"temperature": 0.7}, 0)}
    assert len({a, *others}) == 5


def test_trace_id_ignores_n_but_not_the_prompt_around_the_question():
    p = [{"role": "user", "content": "What is 1 + 1?"}]
    assert make_trace_id(p, "m", {"temperature": 0.6, "n": 4}, 3) == make_trace_id(p, "m", {"temperature": 0.6, "n": 8}, 3)
    # same question, another system prompt / few-shot turn: another sample
    with_system = [{"role": "system", "content": "Think step by step."}, *p]
    with_shot = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}, *p]
    assert len({make_trace_id(x, "m", {}, 0) for x in (p, with_system, with_shot)}) == 3


def test_table_round_trip_keeps_nulls_and_scores(make_trace):
    t = make_trace(correct=None, scores={"rejection": None, "truncation": 0.0}, kept=False, rejected_by="unverifiable")
    table = to_table([t])
    assert table.schema == SCHEMA
    back = from_table(table)[0]
    assert back.correct is None and back.scores == {"rejection": None, "truncation": 0.0}
    assert back.prompt == t.prompt and back.rejected_by == "unverifiable"

