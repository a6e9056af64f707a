from pipeline.data.r1format import extract_boxed, format_response, is_r1_format, split_think


def test_format_round_trip():
    text = format_response("2 + 2 = 4.", "Adding gives 4.", "4")
    assert text.startswith("<think>\n2 + 2 = 4.\n</think>\n\n")
    assert split_think(text) == ("2 + 2 = 4.", "Adding gives 4. The answer is \\boxed{4}.")
    assert extract_boxed(text) == "4"
    assert is_r1_format(text)


def test_extract_boxed_nested_last_and_missing():
    assert extract_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{ 2 }") == "2"
    assert extract_boxed("no box") is None
    assert extract_boxed(r"\boxed{unclosed") is None


def test_malformed_outputs_are_not_r1_format():
    assert split_think("<think>a</think><think>b</think> \\boxed{1}") is None  # duplicated block
    assert not is_r1_format("<think>a</think> no box")
    assert not is_r1_format("\\boxed{1}")  # no reasoning
    assert not is_r1_format("<think></think> \\boxed{1}")  # empty reasoning
    assert not is_r1_format("text <think>a</think> \\boxed{1}")  # think must come first
    assert not is_r1_format("<think>a \\boxed{1}")  # unclosed
