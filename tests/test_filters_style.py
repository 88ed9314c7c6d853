from distill.filters import apply_filters, make_filter

CODE = "Let me check with code.\n```python\nprint(3 * 4 + 5)\n```\nIt prints 17."


def test_code_block_in_reasoning_is_rejected(make_trace):
    t = make_trace(f"<think>{CODE}</think> \\boxed{{17}}")
    apply_filters([t], [make_filter("code_in_cot")])
    assert (t.kept, t.rejected_by, t.scores["code_in_cot"]) == (False, "code_in_cot", 1.0)


def test_reasoning_without_code_is_kept(make_trace):
    t = make_trace()
    apply_filters([t], [make_filter("code_in_cot")])
    assert (t.kept, t.scores["code_in_cot"]) == (True, 0.0)


def test_code_in_the_answer_is_not_code_in_cot(make_trace):
    t = make_trace(f"<think>3 times 4 plus 5 is 17.</think>\n{CODE}")
    assert make_filter("code_in_cot").score(t) == 0.0


def test_unclosed_fence_counts_and_max_blocks_allows_some(make_trace):
    t = make_trace(f"<think>{CODE}\n```python\nwhile True:\n    pass</think>")
    assert make_filter("code_in_cot").score(t) == 2.0
    apply_filters([t], [make_filter("code_in_cot", max_blocks=2)])
    assert t.kept


def test_wall_of_text_is_long_paragraph(make_trace):
    wall = "Adding the next term changes the sum by one more than before. " * 40  # ~2,500 chars
    t = make_trace(f"<think>Start.\n\n{wall}\n\nDone.</think> \\boxed{{1}}")
    apply_filters([t], [make_filter("long_paragraph")])
    assert (t.kept, t.rejected_by) == (False, "long_paragraph")
    assert t.scores["long_paragraph"] == len(wall.strip())


def test_same_text_in_paragraphs_is_kept(make_trace):
    para = "Adding the next term changes the sum by one more than before. " * 8
    t = make_trace("<think>" + "\n\n".join([para] * 5) + "</think> \\boxed{1}")
    apply_filters([t], [make_filter("long_paragraph")])
    assert t.kept and t.scores["long_paragraph"] == len(para.strip())
