"""Token counting: offline, verified tiktoken encodings and prompt token estimates.

- `get_encoding`, `encoding_name_for_model`: encodings loaded from a package, never downloaded;
  `is_loaded`, `loaded_encodings`: which are built already (the server builds its own at start).
- `count_text_tokens`, `count_openai_chat_prompt`: OpenAI counts, cookbook method.
- `approximate_anthropic_prompt`: a local over-estimate for Anthropic Messages bodies.
- `estimate_prompt_tokens`, `estimate_prompt`: either of the above, off the event loop for
  large prompts; the latter also names a part whose cost has no upper bound.
- `ledger.tokens.media`: the upper bounds for PDFs and audio.
"""

from ledger.tokens.anthropic_approx import approximate_anthropic_prompt
from ledger.tokens.encodings import (
    O200K_BASE,
    encoding_name_for_model,
    get_encoding,
    is_loaded,
    loaded_encodings,
)
from ledger.tokens.estimate import PromptEstimate, estimate_prompt, estimate_prompt_tokens
from ledger.tokens.openai_chat import count_openai_chat_prompt, count_text_tokens

__all__ = [
    "O200K_BASE",
    "PromptEstimate",
    "approximate_anthropic_prompt",
    "count_openai_chat_prompt",
    "count_text_tokens",
    "encoding_name_for_model",
    "estimate_prompt",
    "estimate_prompt_tokens",
    "get_encoding",
    "is_loaded",
    "loaded_encodings",
]
