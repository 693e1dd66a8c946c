"""Formatting rows into token ids and labels with loss masks (chat template or plain text).

Formatting (``prompt_format``): ``"chat"`` renders prompt/response rows as a user turn and an assistant
turn through ``tokenizer.apply_chat_template``; ``"plain"`` uses ``prompt + "\\n"`` then the response
followed by EOS; ``"auto"`` (default) picks ``"chat"`` when the tokenizer has a chat template. At
inference, format a prompt the same way (:func:`format_prompt`) so that the model sees what it was
trained on.

Masking: labels are ``IGNORE_INDEX`` (``-100``, the value transformers' CE ignores too) on prompt,
system/user turns and padding. For chat rows the assistant spans are found by rendering prefixes of the
conversation as text: ``render(messages[:i], add_generation_prompt=True)`` ends where assistant turn
``i`` starts and ``render(messages[:i+1])`` ends where it ends (its end-of-turn tokens, e.g. EOS, are
labeled so the model learns to stop). Each span is tokenised separately, which matches inference, where
the prompt is tokenised alone. A template whose renders are not prefixes of each other is rejected with
an error.
"""

from __future__ import annotations

from entropy_reg.errors import UserError

# The label value that is not trained on (prompt, padding); transformers' ForCausalLMLoss ignores it too.
IGNORE_INDEX = -100


def _encode(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]) if text else []


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _render_prefix(tokenizer, messages: list[dict]) -> str:
    """The render that ends where the next (assistant) turn's content starts."""
    try:
        return _render(tokenizer, messages, add_generation_prompt=True)
    except Exception:
        if messages:
            raise
        return ""  # some templates cannot render an empty conversation (assistant speaks first)


def format_prompt(tokenizer, prompt: str, prompt_format: str = "auto") -> str:
    """The text a prompt is turned into before tokenisation (what generation should feed the model)."""
    if _use_chat(tokenizer, prompt_format):
        return _render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return prompt + "\n"


def _use_chat(tokenizer, prompt_format: str) -> bool:
    if prompt_format not in ("auto", "chat", "plain"):
        raise UserError(f"prompt_format must be 'auto', 'chat' or 'plain', got {prompt_format!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise UserError("prompt_format='chat' but the tokenizer has no chat_template")
    return prompt_format == "chat" or (prompt_format == "auto" and has_template)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token_id; responses must end with EOS")
    return tokenizer.eos_token_id


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Tokenise a conversation; labels are the token ids on assistant turns and -100 elsewhere.

    Raises:
        ValueError: the tokenizer has no chat template, or its renders are not prefix-consistent.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat rows ('messages') need a tokenizer with a chat_template")
    segments: list[tuple[str, bool]] = []  # (text, is_labeled)
    done = ""  # text rendered and assigned to segments so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_prefix(tokenizer, messages[:i])
        through = _render(tokenizer, messages[: i + 1])
        if not before.startswith(done) or not through.startswith(before):
            raise UserError(
                "the chat template is not prefix-consistent (rendering a conversation prefix does not "
                "give a prefix of the full render), so assistant turns cannot be located for masking"
            )
        segments += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    full = _render(tokenizer, messages)
    if not full.startswith(done):
        raise UserError("the chat template is not prefix-consistent (see tokenize_chat)")
    segments.append((full[len(done) :], False))
    input_ids: list[int] = []
    labels: list[int] = []
    for text, labeled in segments:
        ids = _encode(tokenizer, text)
        input_ids += ids
        labels += ids if labeled else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def tokenize_prompt_response(
    tokenizer, prompt: str, response: str, prompt_format: str = "auto"
) -> tuple[list[int], list[int]]:
    """Tokenise one prompt/response pair; labels are -100 on the prompt, token ids on the response.

    ``"plain"`` format: ``prompt + "\\n"`` (with the tokenizer's own special tokens, e.g. a BOS) then the
    response and an appended EOS. ``"chat"`` format: a user turn and an assistant turn; the template's
    end-of-turn tokens close the response.
    """
    if _use_chat(tokenizer, prompt_format):
        return tokenize_chat(
            tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        )
    prompt_ids = _encode(tokenizer, prompt + "\n", add_special_tokens=True)
    response_ids = _encode(tokenizer, response) + [_eos_id(tokenizer)]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids
