"""trl's other preference formats in: conversational rows rendered to text, implicit prompts
extracted, unpaired rows refused. :mod:`stages.lib.ingest_sources` reads the rows; this module
tells a split's format from its first row and turns a row of the formats below into the plain
``prompt``, ``chosen``, ``rejected`` texts the rest of ``ingest`` works on::

    from stages.lib.ingest_formats import Chat, detect
    detect({"chosen": [...], "rejected": [...]})     # "conversational-implicit"
    chat = Chat("auto", tokenizer)                   # ingest.chat_template
    prompt, chosen, rejected = chat.render(context, chosen_turn, rejected_turn, where)

Formats, by the columns of a split's first row (``detect``):

* ``pairwise`` / ``ranked``: trl's standard text form and the ranked form (ingest_sources);
* ``conversational``: ``prompt``, ``chosen``, ``rejected`` each a list of ``{"role",
  "content"}`` messages (roles ``system``, ``user``, ``assistant``, ``tool``; other keys are
  ignored);
* ``conversational-implicit``: ``chosen`` and ``rejected`` hold the whole conversation, no
  ``prompt`` (a text ``prompt`` column beside message lists is ignored, as trl's
  ``maybe_extract_prompt`` ignores it);
* ``pairwise-implicit``: ``chosen`` and ``rejected`` plain text with no ``prompt``: the prompt
  is their longest common prefix, cut as trl 1.16's ``extract_prompt`` cuts it (:func:`implicit_cut`);
* ``unpaired``: ``prompt``, ``completion``, ``label`` (trl's unpaired form): refused
  (:data:`UNPAIRED`), every loss here needs pairs or rankings.

**Conversations.** A side's conversation is ``prompt + chosen`` (or ``chosen`` alone when the
prompt is implicit); its last message is the completion and must be an assistant turn, and the
messages before it (the context, at least one) must be the same on both sides. The context is
the prompt, rendered with ``ingest.chat_template``:

* ``tokenizer`` (``auto`` when ``sft.model``'s tokenizer has a ``chat_template``): as trl's
  ``apply_chat_template`` renders a preference example: the prompt is the context rendered with
  ``add_generation_prompt=True``, cut to its common prefix with the renderings of context +
  chosen turn and context + rejected turn, and each completion is the rest of its rendering.
  Special tokens the template writes into the prompt (the EOS included) are kept; a completion
  that ends with the EOS token (then whitespace at most, e.g. ChatML's newline) ends before it,
  since ingest appends the EOS id as for a sampled completion that stopped;
* ``plain`` (``auto`` without a template): every context turn ``"{role}: {content}\\n"``, then
  ``"assistant:"``; the completion is ``" " + content`` (a leading space, as a word follows
  ``:`` in text, so the completion's first word is one token of a BPE vocabulary). Prompt +
  completion is the conversation with every turn ``"{role}: {content}\\n"``, the last newline
  left to the EOS.

Errors are one line, ``<where>: field '<field>'[ message <k>]: ...`` (messages count from 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.lib.common import first_line
from stages.lib.trl_format import common_prefix_length

ROLES = ("system", "user", "assistant", "tool")
CHAT_TEMPLATES = ("auto", "tokenizer", "plain")
CONVERSATIONAL = ("conversational", "conversational-implicit")
#: What a split's columns may be (for the message naming a missing column).
EXPECTED = (
    "trl's prompt, chosen, rejected (text, or lists of messages; chosen, rejected alone: an "
    "implicit prompt) or ranked prompt, completions, rewards"
)
UNPAIRED = (
    "trl's unpaired preference format (prompt, completion, label) is not supported: the losses "
    "here need pairs or rankings (KTO-style unpaired losses are not implemented); pair each "
    "prompt's desirable and undesirable completions into prompt, chosen, rejected rows, or give "
    "a prompt's completions as one ranked row (prompt, completions, rewards 1/0)"
)


def detect(first: dict) -> str:
    """A split's format from its first row (its keys are the split's columns)."""
    columns = set(first)
    if columns & {"completions", "rewards"}:
        return "ranked"
    if columns & {"chosen", "rejected"}:
        side = first.get("chosen", first.get("rejected"))
        if isinstance(side, list):
            explicit = "prompt" in columns and not isinstance(first["prompt"], str)
            return "conversational" if explicit else "conversational-implicit"
        return "pairwise" if "prompt" in columns else "pairwise-implicit"
    if columns & {"completion", "label"}:
        return "unpaired"
    return "pairwise"  # no preference column: read_records names the missing ones


def columns_of(fmt: str) -> tuple[str, ...]:
    """The columns a split of format ``fmt`` must have."""
    if fmt == "ranked":
        return ("prompt", "completions", "rewards")
    if fmt in ("pairwise", "conversational"):
        return ("prompt", "chosen", "rejected")
    return ("chosen", "rejected")


# --------------------------------------------------------------------------- implicit prompt


def implicit_cut(chosen: str, rejected: str) -> int | None:
    """Where trl 1.16's ``extract_prompt`` ends the prompt of two texts: at their first
    differing character, one back when the character before it is a space (the space goes to
    the completions). None when no character differs (one text is a prefix of the other) and 0
    when the first does (no common prefix; trl would then cut at a trailing space of ``chosen``)."""
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            return idx - 1 if idx and chosen[idx - 1] == " " else idx
    return None


def split_implicit(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """``(prompt, chosen completion, rejected completion)`` of an implicit-prompt text pair."""
    cut = implicit_cut(chosen, rejected)
    if cut is None:
        short, long = (
            ("chosen", "rejected") if len(chosen) < len(rejected) else ("rejected", "chosen")
        )
        raise ValueError(
            f"{where}: field '{short}' is a prefix of '{long}': nothing is left of it after "
            f"the implicit prompt (their longest common prefix; there is no 'prompt' column)"
        )
    if not chosen[:cut].strip():
        raise ValueError(
            f"{where}: fields 'chosen' and 'rejected' share no prefix: with no 'prompt' column "
            f"the prompt is their longest common prefix, so both must start with it"
        )
    out = chosen[:cut], chosen[cut:], rejected[cut:]
    for field, text in zip(("chosen", "rejected"), out[1:]):
        if not text.strip():
            raise ValueError(f"{where}: field '{field}' is empty after the implicit prompt")
    return out


# --------------------------------------------------------------------------- conversations


def messages(value, where: str, field: str) -> list[dict]:
    """A checked message list: ``[{"role", "content"}, ...]`` (other keys dropped)."""
    if value is None:
        raise ValueError(f"{where}: field '{field}' is missing")
    if isinstance(value, str):
        raise ValueError(
            f"{where}: field '{field}' must be a list of messages like the split's first row, "
            f"got text {value[:40]!r}"
        )
    if not isinstance(value, list):
        raise ValueError(f"{where}: field '{field}' must be a list of messages, got {value!r}")
    if not value:
        raise ValueError(f"{where}: field '{field}' has no messages")
    out = []
    for k, m in enumerate(value, 1):
        at = f"{where}: field '{field}' message {k}"
        if not isinstance(m, dict):
            raise ValueError(f"{at}: must be a {{'role', 'content'}} mapping, got {m!r:.60}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise ValueError(f"{at}: 'role' must be text, got {role!r:.60}")
        if role not in ROLES:
            raise ValueError(f"{at}: unknown role {role!r} (known: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise ValueError(f"{at}: 'content' must be text, got {content!r:.60}")
        out.append({"role": role, "content": content})
    return out


def _last_turn(conversation: list[dict], where: str, field: str, start: int) -> dict:
    """The completion of one side: its last message, an assistant turn with text."""
    last = conversation[-1]
    if not any(m["role"] == "assistant" for m in conversation[start:]):
        raise ValueError(
            f"{where}: field '{field}' has no assistant turn (the last assistant turn is the "
            f"completion)"
        )
    k = len(conversation) - start
    if last["role"] != "assistant":
        raise ValueError(
            f"{where}: field '{field}' message {k}: a {last['role']!r} turn after the last "
            f"assistant turn (the completion must be the last message)"
        )
    if not last["content"].strip():
        raise ValueError(f"{where}: field '{field}' message {k}: the completion is empty")
    return last


def split_conversation(
    prompt: list[dict] | None, chosen: list[dict], rejected: list[dict], where: str
) -> tuple[list[dict], dict, dict]:
    """``(context, chosen turn, rejected turn)``: both sides' conversations differ only in
    their last message, an assistant turn, and share at least one message before it."""
    start = len(prompt or [])
    sides = {f: (prompt or []) + msgs for f, msgs in (("chosen", chosen), ("rejected", rejected))}
    turns = {f: _last_turn(conv, where, f, start) for f, conv in sides.items()}
    context, other = sides["chosen"][:-1], sides["rejected"][:-1]
    if context != other:
        k = next((i for i, (a, b) in enumerate(zip(context, other)) if a != b), None)
        k = min(len(context), len(other)) if k is None else k
        raise ValueError(
            f"{where}: fields 'chosen' and 'rejected' differ before their last assistant turn "
            f"(message {k + 1 - start}); only the completion, the last turn, may differ"
        )
    if not context:
        raise ValueError(
            f"{where}: field 'chosen' has no message before its assistant turn (no prompt)"
        )
    if turns["chosen"]["content"] == turns["rejected"]["content"]:
        raise ValueError(f"{where}: field 'rejected' is identical to 'chosen' (the last turn)")
    return context, turns["chosen"], turns["rejected"]


@dataclass
class Chat:
    """How messages become text: ``ingest.chat_template`` and the policy's tokenizer."""

    mode: str = "plain"
    tokenizer: object = None

    @property
    def name(self) -> str:
        """``tokenizer`` or ``plain``: the template actually used."""
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.mode == "tokenizer" and not has:
            raise ValueError(
                "params: ingest.chat_template: 'tokenizer', but sft.model's tokenizer has no "
                "chat template (use auto or plain)"
            )
        return "tokenizer" if self.mode != "plain" and has else "plain"

    def _apply(self, msgs: list[dict], where: str, field: str, generation: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=generation
            )
        except Exception as err:  # noqa: BLE001 - any template failure is this row's
            raise ValueError(
                f"{where}: field '{field}': the chat template fails to render ({first_line(err)})"
            ) from None

    def _end(self, text: str, where: str, field: str) -> str:
        eos = self.tokenizer.eos_token
        at = text.find(eos) if eos else -1
        if at < 0:
            return text
        if text[at + len(eos) :].strip():
            raise ValueError(
                f"{where}: field '{field}': the chat template puts the EOS token {eos!r} inside "
                f"the completion (use ingest.chat_template: plain)"
            )
        return text[:at]

    def render(
        self, context: list[dict], chosen: dict, rejected: dict, where: str, prompt_field: str
    ) -> tuple[str, str, str]:
        """``(prompt, chosen, rejected)`` texts (module docstring)."""
        if self.name == "plain":
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in context) + "assistant:"
            return prompt, " " + chosen["content"], " " + rejected["content"]
        prompt = self._apply(context, where, prompt_field, True)
        full_c = self._apply([*context, chosen], where, "chosen", False)
        full_r = self._apply([*context, rejected], where, "rejected", False)
        prompt = prompt[: common_prefix_length(prompt, full_c, full_r)]
        if not prompt.strip():
            raise ValueError(
                f"{where}: field '{prompt_field}': the chat template renders no prompt"
            )
        texts = [
            self._end(full[len(prompt) :], where, f)
            for f, full in (("chosen", full_c), ("rejected", full_r))
        ]
        for f, text in zip(("chosen", "rejected"), texts):
            if not text.strip():
                raise ValueError(f"{where}: field '{f}': the chat template renders it empty")
        if texts[0] == texts[1]:
            raise ValueError(f"{where}: field 'rejected' renders identical to 'chosen'")
        return prompt, texts[0], texts[1]
