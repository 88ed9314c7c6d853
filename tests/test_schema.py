from warehouse.schema import SCHEMA, from_table, make_trace_id, sampling_json, split_think, to_table


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
    a = make_trace_id("p", "m", s, 0)
    assert a == make_trace_id("p", "m", s, 0)
    assert len({a, make_trace_id("p", "m", s, 1), make_trace_id("q", "m", s, 0),
                make_trace_id("p", "m2", s, 0), make_trace_id("p", "m", sampling_json({"n": 8}), 0)}) == 5


def test_table_round_trip_keeps_nulls_and_scores(make_trace):
    t = make_trace(correct=None, scores={"rejection": None, "truncation": 0.0}, kept=False, rejected_by="unverifiable")
    table = to_table([t])
    assert table.schema == SCHEMA
    back = from_table(table)[0]
    assert back.correct is None and back.scores == {"rejection": None, "truncation": 0.0}
    assert back.prompt == t.prompt and back.rejected_by == "unverifiable"

