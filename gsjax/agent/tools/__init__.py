"""The agent's tools (search, image_search, browse), their backends and the dispatcher.

    from gsjax.agent.tools import ToolsConfig, build_toolbox
    with build_toolbox(ToolsConfig(world_dir="runs/world")) as tools:
        result = tools.submit(ToolCall("search", {"queries": ["Pefark Foundry"]}), registry).result()

Modules: `base` (hit records, backend interfaces, ToolFailure), `http` (the one HTTP client and
the URL policy), `serper` / `readers` / `summary` / `images` (HTTP backends), `search` /
`image_search` / `browse` (the tools), `toolbox` (dispatch, thread pool, config). The offline
world's in-process backends are in `gsjax.world.index`.
"""

from gsjax.agent.tools.base import (
    FetchedImage,
    ImageHit,
    SearchHit,
    Tool,
    ToolFailure,
    tool_error,
)
from gsjax.agent.tools.browse import BrowseTool
from gsjax.agent.tools.http import HttpClient, HttpConfig, HttpFailure, UrlPolicy, UrlRefused
from gsjax.agent.tools.image_search import ImageSearchTool
from gsjax.agent.tools.search import SearchTool
from gsjax.agent.tools.toolbox import ToolBox, ToolsConfig, build_toolbox

__all__ = [
    "BrowseTool", "FetchedImage", "HttpClient", "HttpConfig", "HttpFailure", "ImageHit", "ImageSearchTool",
    "SearchHit", "SearchTool", "Tool", "ToolBox", "ToolFailure", "ToolsConfig", "UrlPolicy", "UrlRefused",
    "build_toolbox", "tool_error",
]
