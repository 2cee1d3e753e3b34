"""The LangChain tool against a real gateway: text, values, errors and saved images; state
kept between calls; a reaped session replaced once, with a note; and the LangGraph ReAct agent
example (examples/langgraph_agent.py, a scripted model) calling the tool inside its loop."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import requests

from kernelcube.langchain import KernelCubeCodeTool
from tests.support.client_gateway import HEADERS, TOKEN, sessions_on
from tests.support.gateway import REPO


def test_the_tool_returns_text_values_errors_and_saved_images(gateway, tmp_path):
    tool = KernelCubeCodeTool(url=gateway.url, token=TOKEN, output_dir=str(tmp_path))
    try:
        assert tool.client is None  # nothing is started before the first call
        assert tool.invoke({"code": "total = sum(range(10))\nprint('computed')\ntotal"}) == "computed\n45"
        assert tool.invoke({"code": "total * 2"}) == "90"  # the session persists
        text = tool.invoke({"code": "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [total, 3]); plt.show()"})
        [note] = [line for line in text.splitlines() if line.startswith("[image saved to ")]
        path = note.removeprefix("[image saved to ").removesuffix("]")
        assert os.path.dirname(path) == str(tmp_path)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        error = tool.invoke({"code": "int('x')"})
        assert error.startswith("ValueError: invalid literal for int()") and "\x1b[" not in error
        assert "[a rich result: text/html]" in tool.invoke({"code": "from IPython.display import HTML\nHTML('<i>x</i>')"})
        assert tool.invoke({"code": "x = 1"}) == "[no output]"
        session_id = tool.client.session_id
    finally:
        tool.close()
    assert session_id not in sessions_on(gateway)


def test_a_reaped_session_is_replaced_once_with_a_note(gateway):
    tool = KernelCubeCodeTool(url=gateway.url, token=TOKEN, timeout=1)
    try:
        tool.invoke({"code": "v = 1"})
        first = tool.client.session_id
        assert requests.delete(f"{gateway.url}/v1/sessions/{first}", headers=HEADERS, timeout=30).status_code == 204
        text = tool.invoke({"code": "'v' in globals()"})
        assert f"session {first} had ended" in text and "earlier variables are gone" in text
        assert text.endswith("False") and tool.client.session_id != first
        assert "exceeded its 1 s timeout" in tool.invoke({"code": "import time; time.sleep(10)"})
    finally:
        tool.close()


def test_the_langgraph_react_agent_example_runs_the_tool_in_its_loop(gateway, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the tool saves images by default
    monkeypatch.setenv("KERNELCUBE_URL", gateway.url)
    monkeypatch.setenv("KERNELCUBE_TOKEN", TOKEN)
    spec = importlib.util.spec_from_file_location("langgraph_agent", os.path.join(REPO, "examples",
                                                                                 "langgraph_agent.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    messages = example.main()
    kinds = [m.type for m in messages]
    assert kinds == ["human", "ai", "tool", "ai", "tool", "ai"]
    first, second = (m for m in messages if m.type == "tool")
    assert first.content == "385" and first.tool_call_id == "call-1"
    # The second call used the variable the first one left in the session, and plotted it.
    assert second.content.startswith("max 100\n[image saved to ")
    image = second.content.splitlines()[1].removeprefix("[image saved to ").removesuffix("]")
    assert os.path.getsize(image) > 1000 and image.startswith(str(tmp_path))
    assert messages[-1].content.startswith("The sum of the first ten squares is 385")
    assert "--- tool: 385" in capsys.readouterr().out
    assert sessions_on(gateway) == []
