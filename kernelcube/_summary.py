"""An Execution as text for a language model, and its images saved as files: what the LangChain
tool and the MCP server return. The text says what the code printed, its value, its error, and
one line per non-text result (an image saved and where, or the kinds of a rich result)."""

from __future__ import annotations

import os

from .models import Execution, Result

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg"}
MAX_TEXT = 20_000  # characters of output kept for the model; the rest is cut with a note


def images(execution: Execution) -> list[tuple[str, bytes]]:
    """(MIME type, bytes) of every image among the results, in order."""
    found = []
    for result in execution.results:
        for mime in IMAGE_TYPES:
            if result.data.get(mime):
                found.append((mime, result.decode(mime)))
                break
    return found


def save_images(execution: Execution, directory: str) -> list[str]:
    """Write the execution's images to `directory`; returns their paths."""
    paths = []
    os.makedirs(directory, exist_ok=True)
    for index, (mime, data) in enumerate(images(execution), 1):
        name = f"output-{execution.execution_count or 0}-{index}.{IMAGE_TYPES[mime]}"
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters cut]"


def _result_line(result: Result) -> str | None:
    kinds = [mime for mime in result.data if mime != "text/plain"]
    if not kinds:
        return None
    return f"[a rich result: {', '.join(kinds)}]"


def execution_text(execution: Execution, image_paths: list[str] | None = None) -> str:
    """What the code printed (stdout, then stderr), its value, its error, and notes on non-text
    results; `image_paths` are where its images were saved, if they were."""
    parts = []
    if execution.stdout:
        parts.append(_clip(execution.stdout.rstrip("\n")))
    if execution.stderr:
        parts.append("stderr:\n" + _clip(execution.stderr.rstrip("\n")))
    for result in execution.results:
        if result.is_main_result and result.text is not None:
            parts.append(_clip(result.text))
    if execution.error is not None:
        parts.append(_clip(f"{execution.error.name}: {execution.error.value}\n{execution.error.traceback}".rstrip()))
    notes = []
    image_count = 0
    for result in execution.results:
        if any(result.data.get(mime) for mime in IMAGE_TYPES):
            image_count += 1
            continue
        line = _result_line(result)
        if line:
            notes.append(line)
    if image_count:
        if image_paths:
            notes.extend(f"[image saved to {path}]" for path in image_paths)
        else:
            notes.append(f"[{image_count} image(s) produced]")
    parts.extend(notes)
    if execution.status == "dead":
        parts.append("[the kernel died (most likely out of memory) and was restarted: its variables are lost]")
    return "\n".join(parts) if parts else "[no output]"
