"""Tools the model can call: built-ins (end_call, transfer_call, collect_digits, send_dtmf) and HTTP webhooks.

A tool never raises into the call: failures and timeouts become a JSON error the model can talk about.
Built-ins need the call, so the bridge handles them; this module declares them and runs webhooks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sipagent import strict_json
from sipagent.bridge import webhook
from sipagent.bridge.context import CallContext
from sipagent.bridge.digits import FIRST_DIGIT_TIMEOUT_S, INTER_DIGIT_TIMEOUT_S, MAX_DIGITS, MAX_SEND_DIGITS
from sipagent.bridge.settings import ToolConfig
from sipagent.realtime import events

log = logging.getLogger(__name__)

BUILTIN_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "end_call": (
        "End the call. Say goodbye first; the line is closed once you finish speaking.",
        {"type": "object", "properties": {"reason": {"type": "string"}}},
    ),
    "transfer_call": (
        "Transfer the caller to a human colleague. Tell the caller first; the transfer starts once you "
        "finish speaking.",
        {"type": "object", "properties": {"reason": {"type": "string"}}},
    ),
    "collect_digits": (
        "Have the caller key in a number on the phone's keypad (an order, account or PIN number). Call it as "
        "you ask for the number; keys pressed while you speak count and stop you. The result is the digits "
        "(without the terminator key) and why the entry ended: terminator, count or timeout.",
        {
            "type": "object",
            "properties": {
                "max_digits": {"type": "integer", "minimum": 1, "maximum": MAX_DIGITS,
                               "description": "End the entry after this many digits"},
                "terminator": {"type": "string", "enum": ["#", "*", ""],
                               "description": 'The key that ends the entry ("" for none)'},
                "timeout_s": {"type": "number", "minimum": FIRST_DIGIT_TIMEOUT_S[0],
                              "maximum": FIRST_DIGIT_TIMEOUT_S[1],
                              "description": "Seconds to wait for the first key once you stop speaking"},
                "inter_digit_timeout_s": {"type": "number", "minimum": INTER_DIGIT_TIMEOUT_S[0],
                                          "maximum": INTER_DIGIT_TIMEOUT_S[1],
                                          "description": "Seconds to wait for each further key"},
            },
        },
    ),
    "send_dtmf": (
        "Press keys on the line (DTMF), e.g. to choose an option in an automated phone menu. The result says "
        "once the keys have been sent.",
        {
            "type": "object",
            "properties": {
                "digits": {"type": "string", "pattern": f"^[0-9*#A-Da-d]{{1,{MAX_SEND_DIGITS}}}$",
                           "description": "The keys to press, in order: 0-9, *, #, A-D"},
            },
            "required": ["digits"],
        },
    ),
}
# Built-ins whose arguments the bridge checks against a fixed schema: a file's ``parameters`` are ignored.
FIXED_SCHEMAS = frozenset({"collect_digits", "send_dtmf"})

# Offline stand-in for an order system, used by the demo config (`url: builtin:demo-orders`).
DEMO_ORDERS = {
    "7721": {"order_id": "7721", "status": "shipped", "carrier": "UPS", "eta": "Thursday",
             "message": "Order 7721 has shipped with UPS and should arrive on Thursday."},
    "1234": {"order_id": "1234", "status": "processing", "eta": "next week",
             "message": "Order 1234 is being prepared and should ship next week."},
}


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.output, ensure_ascii=False)


def tool_definitions(tools: list[ToolConfig], transfer_names: list[str] | None = None,
                     default_transfer: bool = False) -> list[dict[str, Any]]:
    """The ``tools`` list for session.update.

    ``transfer_call`` offers the configured target names as an enum and nothing else: the caller's words
    reach the model, so a free-form number there would let a caller talk the agent into dialling anywhere.
    """
    out = []
    for tool in tools:
        description, parameters = tool.description, tool.parameters
        if tool.name == "transfer_call":
            description = description or BUILTIN_SCHEMAS[tool.name][0]
            parameters = transfer_parameters(transfer_names or [], default_transfer)
        elif tool.name in FIXED_SCHEMAS:
            description = description or BUILTIN_SCHEMAS[tool.name][0]
            parameters = BUILTIN_SCHEMAS[tool.name][1]
        elif tool.name in BUILTIN_SCHEMAS:
            default_description, default_parameters = BUILTIN_SCHEMAS[tool.name]
            description = description or default_description
            if not parameters.get("properties"):
                parameters = default_parameters
        out.append({"type": "function", "name": tool.name, "description": description, "parameters": parameters})
    return out


def transfer_parameters(names: list[str], has_default: bool) -> dict[str, Any]:
    """transfer_call's parameters: ``target`` is one of ``names`` (optional when there is a default desk)."""
    properties: dict[str, Any] = {
        "reason": {"type": "string"},
        # Spoken to the colleague in a warm transfer (cleaned and bounded: sipagent.bridge.warm.clean_summary).
        "summary": {"type": "string", "maxLength": 300,
                    "description": "One or two sentences for the colleague: who is calling and what they need"},
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if names:
        properties["target"] = {
            "type": "string", "enum": list(names),
            "description": "Which team to transfer to" + ("; omit for the default desk" if has_default else ""),
        }
        if not has_default:
            schema["required"] = ["target"]
    return schema


# A tool call's arguments are a few fields (an order number, a target, a short summary): anything longer or
# deeper is refused before it reaches the transcript, a webhook or a re-encoding that could hit the recursion
# limit. A result nesting deeper than MAX_RESULT_DEPTH is passed on to the model as text, for the same reason.
MAX_ARGUMENTS_CHARS = 16 * 1024
MAX_ARGUMENTS_DEPTH = 16
MAX_RESULT_DEPTH = 32


def parse_arguments(raw: object) -> dict[str, Any]:
    """The model's arguments of a tool call (the event's ``arguments``, JSON text): a JSON object, or
    ValueError saying what is wrong with them."""
    if not isinstance(raw, str):
        raise ValueError("arguments must be JSON text")
    if len(raw) > MAX_ARGUMENTS_CHARS:
        raise ValueError(f"arguments longer than {MAX_ARGUMENTS_CHARS} characters")
    if not raw.strip():
        return {}
    try:
        # NaN, Infinity and 1e400 would make a webhook's body invalid JSON (json.dumps writes NaN); of a key
        # given twice, a reader of the raw arguments (the provider's logs) may see the other value.
        value = strict_json.loads(raw)
    except RecursionError:  # deeper than the interpreter's stack: never a real call's arguments
        raise ValueError(f"arguments nest deeper than {MAX_ARGUMENTS_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    if events.nested_deeper(value, MAX_ARGUMENTS_DEPTH):
        raise ValueError(f"arguments nest deeper than {MAX_ARGUMENTS_DEPTH} levels")
    if not _well_formed(value):
        # "\ud800" is valid JSON but no character: the transcript (UTF-8) could not be written, and the tool
        # call would go unanswered.
        raise ValueError("arguments must be Unicode text (a lone surrogate escape is not a character)")
    return value


def _well_formed(value: Any) -> bool:
    """Whether every string (keys too) of a parsed JSON value can be written as UTF-8."""
    text = json.dumps(value, ensure_ascii=False)
    return text.isascii() or _encodes(text)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _mend(value: Any) -> Any:
    """A parsed JSON value with each lone surrogate replaced by U+FFFD: a service's answer (JavaScript's
    string slicing can cut a pair in two) must still reach the model and the transcript."""
    if _well_formed(value):
        return value
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return json.loads(text)


# The key of the JSON body that carries the call's context (a POST or PUT tool's parameters may not use it).
CONTEXT_KEY = "context"


async def run_webhook(tool: ToolConfig, arguments: dict[str, Any], call_id: str,
                      context: CallContext | None = None) -> ToolResult:
    """Calls the tool's URL with the arguments (a JSON body, or the query of a GET); the JSON response is
    the result. The whole exchange, DNS to the last byte, has ``tool.timeout_s``; when it runs out, the
    connection is aborted and nothing of the call is left running.

    The call's ``context`` goes along as X-Sipagent-* headers, and in a body as its ``context`` object,
    which replaces anything the model put under that name: the model hears the caller, so it must not be
    able to pass for the phone network. A GET's query is the model's arguments only: the context is in
    the headers (a query also lands in access logs)."""
    if tool.url.startswith("builtin:demo-orders"):
        order = DEMO_ORDERS.get(str(arguments.get("order_id", "")).strip())
        if order is None:
            return ToolResult(False, {"error": "order not found", "order_id": arguments.get("order_id")})
        return ToolResult(True, order)
    url, body = tool.url, None
    arguments = declared_arguments(tool, arguments)
    if tool.method == "GET":
        url = with_query(url, arguments)
    else:
        sent = {**arguments, CONTEXT_KEY: context.to_json()} if context is not None else arguments
        body = json.dumps(sent).encode()
    try:
        async with asyncio.timeout(tool.timeout_s):
            response = await webhook.request(tool.method, url, tool.headers, body, call_id=call_id,
                                             own_headers=context.http_headers() if context else None)
    except TimeoutError:  # before OSError: a connect that times out in the kernel is a slow service too
        return _timed_out(tool)
    except webhook.RequestRefused as exc:
        return _failed(tool, f"the {tool.name} request was not sent ({exc})")
    except webhook.BadResponse as exc:
        return _failed(tool, f"the {tool.name} service sent an unusable answer ({exc})")
    except OSError as exc:
        return _failed(tool, f"the {tool.name} service is unreachable ({exc})")
    if 300 <= response.status < 400:  # never followed: the configured URL is the only place a tool goes
        return _failed(tool, f"the {tool.name} service answered HTTP {response.status} (a redirect, not followed)")
    if not 200 <= response.status < 300:
        return _failed(tool, f"the {tool.name} service answered HTTP {response.status}")
    payload = response.body
    try:
        result = json.loads(payload) if payload.strip() else {}
        usable = not events.nested_deeper(result, MAX_RESULT_DEPTH)
    except (ValueError, RecursionError):
        usable = False
    if not usable:  # the model reads it as text either way
        return ToolResult(True, {"result": payload.decode("utf-8", "replace")[:2000]})
    result = _mend(result)
    return ToolResult(True, result if isinstance(result, dict) else {"result": result})


def declared_arguments(tool: ToolConfig, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments the tool's schema declares (all of them when it declares no properties): the model
    may add others, and they would reach the service as if the tool had asked for them."""
    properties = tool.parameters.get("properties")
    if not isinstance(properties, dict) or not properties:
        return arguments
    extra = [name for name in arguments if name not in properties]
    if extra:
        log.info("tool %s: undeclared arguments not sent: %s", tool.name, ", ".join(n[:40] for n in extra[:5]))
    return {name: value for name, value in arguments.items() if name in properties}


def with_query(url: str, arguments: dict[str, Any]) -> str:
    """A GET tool's URL with the model's arguments added to its query. A parameter the configured URL
    already sets keeps its value (a service that takes the last of a repeated name would otherwise take the
    model's: ``?tenant=acme`` must stay acme), and the configured query is kept as written."""
    parts = urlsplit(url)
    fixed = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    added = urlencode([(name, str(value)) for name, value in arguments.items() if name not in fixed])
    query = "&".join(q for q in (parts.query, added) if q)
    return urlunsplit(parts._replace(query=query, fragment=""))


def _timed_out(tool: ToolConfig) -> ToolResult:
    log.warning("tool %s timed out after %.1f s", tool.name, tool.timeout_s)
    return ToolResult(False, {"error": f"the {tool.name} service did not answer in time"})


def _failed(tool: ToolConfig, error: str) -> ToolResult:
    log.warning("tool %s failed: %s", tool.name, error)
    return ToolResult(False, {"error": error})
