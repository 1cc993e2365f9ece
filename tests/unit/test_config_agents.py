"""``agents:`` profiles, ``routes:`` and ``sip.accounts:``: inheritance, validation with file:line, the table."""

from __future__ import annotations

import pytest

from sipagent.agent import session_settings, ua_settings
from sipagent.config import Config, load_config_text
from sipagent.errors import ConfigError

BASE = """\
realtime:
  provider: local
  instructions: You answer for Northwind.
  voice: alloy
agent:
  greeting: Hello from Northwind.
  idle_timeout_s: 12
  barge_in: {mode: server, min_speech_ms: 300}
  transfer_targets: {billing: "600"}
  tools:
    - name: transfer_call
    - name: end_call
"""

PROFILES = BASE + """\
agents:
  sales:
    greeting: Hello from sales.
    voice: verse
    barge_in: {protect_greeting_ms: 0}
  support:
    instructions: You are the support desk.
    language: de
    transfer_targets: {desk: "700"}
    tools:
      - name: transfer_call
routes:
  - {dialed: "2001", agent: sales}
  - {header: X-Queue, value: support, agent: support}
  - {caller: "+4930*", agent: support}
"""


def load(text: str) -> Config:
    return load_config_text(text, "agent.yaml", {})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return str(info.value)


def test_the_agent_section_is_the_default_profile() -> None:
    default = load(BASE).profiles()["default"]
    assert (default.instructions, default.voice, default.greeting) == (
        "You answer for Northwind.", "alloy", "Hello from Northwind.")
    assert default.transfer_targets == {"billing": "sip:600@0.0.0.0"}
    assert list(load(BASE).profiles()) == ["default"]


def test_a_profile_takes_every_key_it_does_not_set_from_the_default() -> None:
    profiles = load(PROFILES).profiles()
    sales, support = profiles["sales"], profiles["support"]
    assert (sales.name, sales.greeting, sales.voice, sales.instructions) == (
        "sales", "Hello from sales.", "verse", "You answer for Northwind.")
    assert sales.idle_timeout_s == 12
    # Sections merge key by key: the profile's one key, the default's others.
    assert (sales.barge_in.protect_greeting_ms, sales.barge_in.min_speech_ms) == (0, 300)
    assert [t.name for t in sales.tools] == ["transfer_call", "end_call"]
    assert sales.transfer_targets == {"billing": "sip:600@0.0.0.0"}
    # Lists and the transfer targets are taken whole: a profile's replace the default's.
    assert support.greeting == "Hello from Northwind."
    assert [t.name for t in support.tools] == ["transfer_call"]
    assert support.transfer_targets == {"desk": "sip:700@0.0.0.0"}
    assert (support.instructions, support.voice, support.language) == ("You are the support desk.", "alloy", "de")
    assert profiles["default"].greeting == "Hello from Northwind."  # the default is not touched


def test_the_session_offers_only_the_profiles_tools_and_targets() -> None:
    config = load(PROFILES)
    session = session_settings(config, config.profiles()["support"])
    assert session.instructions == "You are the support desk."
    assert session.transcription_language == "de"
    assert [t["name"] for t in session.tools] == ["transfer_call"]
    assert session.tools[0]["parameters"]["properties"]["target"]["enum"] == ["desk"]
    default = session_settings(config)
    assert default.tools[0]["parameters"]["properties"]["target"]["enum"] == ["billing"]
    assert default.transcription_language is None


def test_route_header_names_are_kept_in_each_calls_identity() -> None:
    assert ua_settings(load(PROFILES)).context_headers == ["X-Queue"]


def test_profile_errors_name_the_line_and_the_profile_key() -> None:
    bad = BASE + "agents:\n  sales:\n    greeting: Hi\n    barge_in: {min_speech_ms: 5}\n"
    assert error_of(bad) == "agent.yaml:16: agents.sales.barge_in.min_speech_ms: expected 20 to 2000 ms, got 5"
    bad = BASE + "agents:\n  sales:\n    greting: Hi\n"
    assert error_of(bad).startswith("agent.yaml:15: agents.sales.greting: unknown key (expected one of:")
    bad = BASE + "agents:\n  sales:\n    transfer_targets: {desk: 'not a uri'}\n"
    assert error_of(bad).startswith("agent.yaml:15: agents.sales.transfer_targets.desk: expected an extension")
    bad = BASE + "agents:\n  sales:\n    tools: [{name: lookup}]\n"
    assert error_of(bad).startswith('agent.yaml:15: agents.sales.tools[0]: tool "lookup" needs a url')
    bad = BASE + "agents:\n  sales:\n    language: German\n"
    assert error_of(bad) == ('agent.yaml:15: agents.sales.language: expected a language code such as "en" or "de", '
                             'got "German"')


def test_profile_names_are_checked() -> None:
    assert error_of(BASE + "agents:\n  sales: {}\n  sales: {voice: verse}\n") == (
        "agent.yaml:15: agents.sales: duplicate profile name")
    assert error_of(BASE + "agents:\n  default: {voice: verse}\n").startswith(
        'agent.yaml:14: agents.default: "default" is the profile of the agent: section')
    assert error_of(BASE + "agents:\n  2nd line: {}\n").startswith("agent.yaml:14: agents.2nd line: expected a "
                                                                     "profile name")
    assert error_of(BASE + "agents: [sales]\n").startswith("agent.yaml:13: agents: expected a mapping")
    assert error_of(BASE + "agents:\n  sales: {name: x}\n").startswith("agent.yaml:14: agents.sales.name:")
    assert load(BASE + "agents:\n  sales:\n").agents["sales"].greeting == "Hello from Northwind."


def route_error(routes: str) -> str:
    return error_of(PROFILES.split("routes:")[0] + "routes:\n" + routes)


def test_route_errors_name_the_line_and_the_route() -> None:
    # The routes start on line 25.
    assert route_error("  - {dialed: '2001', agent: sale}\n") == (
        'agent.yaml:25: routes[0].agent: unknown profile "sale" (profiles: default, sales, support)')
    assert route_error("  - {dialed: '2001'}\n") == (
        "agent.yaml:25: routes[0]: expected agent: the profile this route's calls go to")
    assert route_error("  - {dialed: '20 01', agent: sales}\n").startswith(
        "agent.yaml:25: routes[0].dialed: expected a number or extension, optionally ending in * for a prefix")
    assert route_error("  - {caller: '(555)', agent: sales}\n").startswith("agent.yaml:25: routes[0].caller:")
    assert route_error("  - {header: X-Queue, agent: sales}\n") == (
        "agent.yaml:25: routes[0]: header X-Queue needs a value to match (* for any)")
    assert route_error("  - {value: x, agent: sales}\n") == (
        "agent.yaml:25: routes[0].value: value needs header: the header it is matched against")
    assert route_error("  - {header: 'X Queue', value: a, agent: sales}\n").startswith(
        "agent.yaml:25: routes[0].header: expected a SIP header name")
    assert route_error("  - {account: '7001', agent: sales}\n") == (
        'agent.yaml:25: routes[0].account: unknown account "7001" (accounts: none)')
    assert route_error("  - {agent: sales}\n  - {dialed: '2001', agent: support}\n") == (
        "agent.yaml:25: routes[0]: a route without conditions (dialed, caller, header, account) matches every "
        "call: only the last route may be one")
    assert route_error("  - {dialed: '2001', agent: sales}\n  - {dialed: '2001', agent: support}\n") == (
        "agent.yaml:26: routes[1]: unreachable: routes[0] has the same conditions")
    assert route_error("  - {header: x-queue, value: a, agent: sales}\n"
                       "  - {header: X-Queue, value: a, agent: support}\n").startswith("agent.yaml:26: routes[1]: "
                                                                                       "unreachable")


def test_a_dialed_route_must_name_a_number_that_is_ours() -> None:
    text = PROFILES.replace("realtime:", "sip: {username: agent, aliases: ['2001', '2002']}\nrealtime:", 1)
    assert load(text).routes[0].dialed == "2001"
    assert error_of(text.replace("dialed: \"2001\"", "dialed: \"3001\"")) == (
        'agent.yaml:26: routes[0].dialed: "3001" is not one of our user parts (agent, 2001, 2002): calls to it '
        "are refused; add it to sip.aliases")
    assert load(text.replace("dialed: \"2001\"", "dialed: \"20*\"")).routes[0].dialed == "20*"


def test_a_star_inside_a_pattern_is_a_character_and_only_a_last_one_makes_a_prefix() -> None:
    config = load(PROFILES.split("routes:")[0] + "routes:\n  - {dialed: '*97*', agent: sales}\n")
    assert config.routes[0].dialed == "*97*"


def test_a_last_route_without_conditions_is_the_default() -> None:
    config = load(PROFILES.split("routes:")[0] + "routes:\n  - {dialed: '2001', agent: support}\n  - {agent: sales}\n")
    router = config.router()
    assert router.default == "sales" and len(router.routes) == 1
    assert load(PROFILES).router().default == "default"


ACCOUNTS = PROFILES.replace("realtime:", """\
sip:
  registrar: pbx.example.com
  username: "7000"
  password: s3cret-main
  aliases: ["2001"]
  accounts:
    - {username: "7001", password: s3cret-sales, agent: sales}
    - {name: support, username: "7002", password: s3cret-support, auth_user: auth7002, expires: 120}
realtime:""", 1)


def test_accounts_register_besides_sip_username() -> None:
    config = load(ACCOUNTS)
    assert [(a.name, a.username, a.agent, a.expires) for a in config.accounts()] == [
        ("7000", "7000", "", 300), ("7001", "7001", "sales", 0), ("support", "7002", "", 120)]
    assert config.router().accounts == {"7001": "sales"}
    # The UA gets every account, sip.username first; expires 0 means sip.expires.
    settings = ua_settings(config)
    assert [(a.name, a.username, a.auth_user, a.expires) for a in settings.accounts] == [
        ("7000", "7000", "", 300), ("7001", "7001", "", 300), ("support", "7002", "auth7002", 120)]
    assert "s3cret" not in repr(settings.accounts)


def test_accounts_alone_need_no_sip_username() -> None:
    config = load(ACCOUNTS.replace('  username: "7000"\n  password: s3cret-main\n', "", 1))
    assert [a.name for a in config.accounts()] == ["7001", "support"]


def test_account_errors() -> None:
    def bad(old: str, new: str) -> str:
        return error_of(ACCOUNTS.replace(old, new, 1))

    assert bad("agent: sales}", "agent: sale}") == (
        'agent.yaml:7: sip.accounts[0].agent: unknown profile "sale" (profiles: default, sales, support)')
    assert bad('username: "7001"', 'username: "7000"') == 'agent.yaml:7: sip.accounts[0].username: "7000" is ' \
                                                          'registered twice'
    assert bad("name: support,", "name: '7001',") == 'agent.yaml:8: sip.accounts[1].name: duplicate account name "7001"'
    assert bad("expires: 120", "expires: 30") == (
        "agent.yaml:8: sip.accounts[1].expires: expected 0 (sip.expires) or 60 to 86400 seconds (a day), got 30")
    assert bad("registrar: pbx.example.com", "registrar: ''").startswith(
        "agent.yaml:7: sip.accounts: accounts register: sip.registrar is required")
    # A route may name an account.
    assert load(ACCOUNTS + "  - {account: support, agent: support}\n").routes[-1].account == "support"


def test_secrets_of_accounts_are_never_shown() -> None:
    config = load(ACCOUNTS)
    table = "\n".join(config.routing_table()) + config.summary()
    assert "s3cret" not in table
    assert "support: 7002@pbx.example.com, auth user auth7002, expires 120 s, profile (by the routes)" in table
    assert "7001: 7001@pbx.example.com, expires 300 s, profile sales" in table
    assert "sip:       registering 7000@pbx.example.com, 7001@pbx.example.com, 7002@pbx.example.com at " \
           "pbx.example.com" in table
    message = error_of(ACCOUNTS.replace("password: s3cret-sales", "password: {a: b}"))
    assert "s3cret" not in message and "sip.accounts[0].password" in message


def test_check_prints_the_routing_table() -> None:
    lines = load(PROFILES).routing_table()
    assert lines == [
        "profiles:",
        "  default: voice alloy, tools transfer_call, end_call, transfer targets billing, barge-in server",
        "  sales: voice verse, tools transfer_call, end_call, transfer targets billing, barge-in server, "
        "unset keys from default",
        "  support: voice alloy, tools transfer_call, transfer targets desk, barge-in server, language de, "
        "unset keys from default",
        "routes (first match wins):",
        "  1. dialed 2001 -> sales",
        "  2. header X-Queue: support -> support",
        "  3. caller +4930* -> support",
        "  then: otherwise -> default",
    ]


def test_a_profiles_texts_are_templates_checked_at_their_line() -> None:
    bad = BASE + "agents:\n  sales:\n    greeting: Hi\n    goodbye: Bye {caler_name}\n"
    assert error_of(bad).startswith("agent.yaml:16: agents.sales.goodbye: unknown template variable {caler_name}")
    bad = BASE + "agents:\n  sales:\n    instructions: |\n      Line one.\n      Customer {header.X-Customer-Id}.\n"
    assert error_of(bad).startswith("agent.yaml:17: agents.sales.instructions: ")  # the block's second line
    good = "context: {headers: [X-Customer-Id]}\n" + bad
    assert load(good).profiles()["sales"].instructions == "Line one.\nCustomer {header.X-Customer-Id}.\n"


def test_a_profiles_dtmf_settings_merge_with_the_defaults() -> None:
    config = load(BASE.replace("agent:\n", "agent:\n  dtmf: {max_digits: 12, terminator: '*'}\n", 1)
                  + "agents:\n  sales:\n    dtmf: {max_digits: 6}\n")
    sales = config.profiles()["sales"].dtmf
    assert (sales.max_digits, sales.terminator) == (6, "*")
    bad = BASE + "agents:\n  sales:\n    dtmf: {max_digits: 0}\n"
    assert error_of(bad).startswith("agent.yaml:15: agents.sales.dtmf.max_digits: expected 1 to")


def test_templates_and_routes_keep_their_headers_once() -> None:
    config = load("context: {headers: [X-Customer-Id, x-queue]}\n" + PROFILES)
    assert ua_settings(config).context_headers == ["X-Customer-Id", "x-queue"]
