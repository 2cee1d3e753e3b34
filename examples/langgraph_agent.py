"""A LangGraph ReAct agent whose Python tool runs in a KernelCube session.

The model is scripted (langchain-core's GenericFakeChatModel), so the example runs without an
LLM or a network: it asks for the tool twice (the second call uses a variable the first one
left in the session, then plots it), then answers. Put a real chat model in `build_agent` and
the loop is the same.

    KERNELCUBE_URL=http://127.0.0.1:8888 KERNELCUBE_TOKEN=<token> python examples/langgraph_agent.py
"""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from kernelcube.langchain import KernelCubeCodeTool


class ScriptedChatModel(GenericFakeChatModel):
    """Replays its messages in order; tools bound to it change nothing (the script already
    names them)."""

    def bind_tools(self, tools, **kwargs):
        return self


def tool_call(call_id: str, code: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "python", "args": {"code": code}, "id": call_id}])


SCRIPT = [
    tool_call("call-1", "squares = [n * n for n in range(1, 11)]\nsum(squares)"),
    tool_call("call-2", "import matplotlib.pyplot as plt\nplt.plot(squares)\nplt.title('squares')\nplt.show()\n"
                        "print('max', max(squares))"),
    AIMessage(content="The sum of the first ten squares is 385; the plot of them is saved."),
]


def build_agent(model, tool: KernelCubeCodeTool):
    """The ReAct loop: the model speaks; while it asks for tools, they run and it speaks again."""
    bound = model.bind_tools([tool])

    def call_model(state: MessagesState) -> dict:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([tool]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile()


def main() -> list:
    tool = KernelCubeCodeTool()
    try:
        agent = build_agent(ScriptedChatModel(messages=iter(SCRIPT)), tool)
        state = agent.invoke({"messages": [HumanMessage("What is the sum of the first ten squares? Plot them.")]})
    finally:
        tool.close()
    for message in state["messages"]:
        print(f"--- {message.type}: {message.content or message.tool_calls}")
    return state["messages"]


if __name__ == "__main__":
    main()
