"""An Ollama ``Modelfile`` for a GGUF: the trained prompt format as Ollama's Go template, and the stop token.

Ollama does not run Jinja, and without the right ``TEMPLATE`` and ``PARAMETER stop`` a fine-tuned model gets
Ollama's default format and talks past its end token. The template is read off the trained Jinja template by
rendering it with marker contents: what comes before and after each role's content. The Go template built
from those pieces is then replayed in Python on a few conversations and must render them exactly as the
Jinja template does; where it can't (a template that folds the system prompt into the first user turn, say),
the Modelfile is still written and the report says which conversations differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kielo.data.template import Template, render

log = logging.getLogger(__name__)

_MARK = {"system": "\x01kielo-system\x01", "user": "\x01kielo-user\x01", "assistant": "\x01kielo-assistant\x01"}
_CHECKS = (
    [{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}],
    [{"role": "system", "content": "Vastaa lyhyesti."}, {"role": "user", "content": "Hei!"}],
    [
        {"role": "user", "content": "Kerro vitsi."},
        {"role": "assistant", "content": "Miksi kirahvilla on pitkä kaula?"},
        {"role": "user", "content": "No miksi?"},
    ],
)


def _pieces(tokenizer, template: Template) -> dict[str, str]:
    """Text before and after each role's content, and the generation prompt, read off the Jinja template.

    What follows a user turn is kept with the next turn: the header before an answer in the history
    (``assistant_pre``) and the generation prompt may differ, and the user's own closing text is part of both.
    """
    bos = tokenizer.bos_token or ""
    one = render(tokenizer, template, [{"role": "user", "content": _MARK["user"]}], add_generation_prompt=True)
    head, generation = one.removeprefix(bos).split(_MARK["user"])
    turn = render(
        tokenizer,
        template,
        [{"role": "user", "content": _MARK["user"]}, {"role": "assistant", "content": _MARK["assistant"]}],
    )
    after_user, after_assistant = turn.split(_MARK["user"])[1].split(_MARK["assistant"])
    pieces = {"user_pre": head, "assistant_pre": after_user, "assistant_post": after_assistant, "generation": generation}
    try:
        sys_text = render(
            tokenizer, template, [{"role": "system", "content": _MARK["system"]}, {"role": "user", "content": _MARK["user"]}]
        )
    except Exception as e:  # noqa: BLE001 - chat templates raise anything (TemplateError, ValueError) on a system turn
        log.debug("the template takes no system message: %s", e)
        return pieces
    sys_head, sys_rest = sys_text.removeprefix(bos).split(_MARK["system"])
    pieces["system_pre"] = sys_head
    pieces["system_post"] = sys_rest.split(_MARK["user"])[0].removesuffix(head)
    return pieces


def _replay(p: dict[str, str], messages: list[dict], bos: str) -> str:
    """What :func:`go_template` renders for ``messages``, with BOS in front as llama.cpp adds it."""
    out = [bos]
    for m in messages:
        role = m["role"] if m["role"] in ("system", "user") else "assistant"
        out += [p.get(f"{role}_pre", ""), m["content"], p.get(f"{role}_post", "")]
    return "".join(out) + p["generation"]


def go_template(p: dict[str, str]) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages) from the pieces; no whitespace trimming."""
    branch = (
        '{{ if eq .Role "system" }}' + p["system_pre"] + "{{ .Content }}" + p["system_post"] + "{{ else "
        if "system_pre" in p
        else "{{ "
    )
    return (
        "{{ range .Messages }}"
        + branch
        + 'if eq .Role "user" }}'
        + p["user_pre"]
        + "{{ .Content }}{{ else }}"
        + p["assistant_pre"]
        + "{{ .Content }}"
        + p["assistant_post"]
        + "{{ end }}{{ end }}"
        + p["generation"]
    )


def modelfile_text(gguf_name: str, tokenizer, template: Template) -> tuple[str, dict]:
    """The Modelfile for ``gguf_name`` (beside it) and how well its template matches the trained one."""
    p = _pieces(tokenizer, template)
    bos = tokenizer.bos_token or ""
    differ = []
    for i, messages in enumerate(_CHECKS):
        if messages[0]["role"] == "system" and "system_pre" not in p:
            continue
        want = render(tokenizer, template, messages, add_generation_prompt=True)
        if _replay(p, messages, bos) != want:
            differ.append(i)
    body = go_template(p)
    if '"""' in body:
        raise ValueError("the prompt format contains triple quotes, which a Modelfile can't hold")
    text = (
        f"# Written by kielo merge: the prompt format and end token the model was trained with.\n"
        f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{body}"""\n'
        f'PARAMETER stop "{template.end_token}"\n'
        "PARAMETER temperature 0\n"
    )
    return text, {"conversations_checked": len(_CHECKS), "differ": differ, "system": "system_pre" in p, "stop": template.end_token}


def write_modelfile(folder: Path, gguf_name: str, tokenizer, template: Template, name: str = "Modelfile") -> dict:
    """Write ``folder/name`` for ``gguf_name``; returns what the report says about it."""
    text, info = modelfile_text(gguf_name, tokenizer, template)
    (folder / name).write_text(text, encoding="utf-8")
    if info["differ"]:
        log.warning("the Modelfile's template renders %d of %d test conversations differently", len(info["differ"]), len(_CHECKS))
    return {"file": name, "gguf": gguf_name, **info, "passed": not info["differ"]}
