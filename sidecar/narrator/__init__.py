"""The narrator: the one voice the user hears, and everything it needs to speak.

- :mod:`~sidecar.narrator.llm`: the chat-completions client (policy advice, the narrator);
- :mod:`~sidecar.narrator.templates`: the prompt templates, overrides and hot reload;
- :mod:`~sidecar.narrator.prompt`: the narrator's prompt, template plus context, within budget;
- :mod:`~sidecar.narrator.speak`: saying something to the user with a speak grant;
- :mod:`~sidecar.narrator.service`: :class:`Narrator`, the built-in narrator and the LLM
  advisor, which the daemon builds from the parts it needs.

The controller (:mod:`sidecar.controller`) decides when the narrator may speak; it never
imports this package, and reaches the advisor only through the callback it is given.
"""

from __future__ import annotations
