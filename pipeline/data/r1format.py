"""The one output convention used everywhere (SFT targets, rewards, rejection sampling, eval).

    <think>
    …reasoning…
    </think>

    …concise summary… The answer is \\boxed{ANSWER}.

R1 put the reasoning between special markers and a summary after it (§2.3.1). We use literal
`<think>` tags (what R1's released models emit) and `\\boxed{}` for the final result, because
math-verify and most math benchmarks already parse it.
"""

from __future__ import annotations

import re
from typing import Optional

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_RE = re.compile(r"^\s*<think>\n?(.*?)\n?</think>\s*(.*)$", re.DOTALL)


def format_response(reasoning: str, summary: str, answer: str) -> str:
    """Build an R1-format assistant message; `summary` is prose, `answer` goes in the box."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{summary.strip()} The answer is \\boxed{{{answer}}}."


def split_think(text: str) -> Optional[tuple[str, str]]:
    """(reasoning, answer part) if `text` is exactly one leading think block then an answer, else None."""
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return None
    m = _THINK_RE.match(text)
    return (m.group(1), m.group(2)) if m else None


def extract_boxed(text: str) -> Optional[str]:
    """Contents of the last `\\boxed{…}` in `text`, with nested braces balanced; None if absent."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def boxed_all(text: str) -> list[str]:
    """Contents of every outermost complete `\\boxed{…}` in `text`, in order. Linear time: braces are
    matched in one pass, so thousands of unclosed `\\boxed{` cannot make it quadratic."""
    match, stack = {}, []
    for j, ch in enumerate(text):
        if ch == "{":
            stack.append(j)
        elif ch == "}" and stack:
            match[stack.pop()] = j
    out, end = [], -1
    start = text.find("\\boxed{")
    while start >= 0:
        brace = start + len("\\boxed")
        close = match.get(brace)
        if close is not None and start > end:  # a box inside a box counts as part of the outer one
            out.append(text[brace + 1 : close].strip())
            end = close
        start = text.find("\\boxed{", start + 1)
    return out


def is_r1_format(text: str) -> bool:
    """One think block, then an answer part that carries a boxed result."""
    parts = split_think(text)
    return parts is not None and bool(parts[0].strip()) and extract_boxed(parts[1]) is not None
