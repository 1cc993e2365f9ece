"""The ``sipagent`` command line: run, check, call, demo, local-realtime."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sipagent import __version__
from sipagent.config import Config, load_config, rtp_port_shortage
from sipagent.errors import ConfigError, SipagentError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipagent",
        description="An AI voice agent as a SIP softphone: registers on your PBX and answers calls.",
    )
    parser.add_argument("--version", action="version", version=f"sipagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="register and answer calls (the main job)")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the YAML configuration")

    check = sub.add_parser("check", help="validate a configuration file and print a summary")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="the YAML configuration")
    check.add_argument(
        "--connect", action="store_true",
        help="also register once, unregister, and open a Realtime session (a doctor for installers)",
    )

    call = sub.add_parser(
        "call", help="place one outbound call and exit with its outcome",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start the agent, call TARGET with an agent profile, wait until the call ends, and exit "
                    "with its outcome. Ctrl-C cancels a ringing call and hangs up an answered one.",
        epilog="exit codes:\n"
               "  0   answered (by a person, or by a machine that got the profile's message)\n"
               "  1   configuration or start-up error\n"
               "  2   usage error (bad target, profile or --var)\n"
               + "".join(f"  {code:<3} {outcome}{' (hung up on, no message left)' if outcome == 'machine' else ''}\n"
                         for outcome, code in _outcome_codes())
               + "see docs/outbound.md")
    call.add_argument("-c", "--config", required=True, metavar="FILE", help="the YAML configuration")
    call.add_argument("target", metavar="TARGET",
                      help='an extension or number ("2002", dialed at the PBX\'s domain) or a sip:/sips: URI')
    call.add_argument("--profile", metavar="P", default=None,
                      help="the agent profile (default: outbound.profile, else default)")
    call.add_argument("--var", metavar="KEY=VALUE", action="append", default=[],
                      help="a call variable, {var.KEY} in the profile's templates (repeatable)")

    demo = sub.add_parser("demo", help="place a real call into an offline agent, end to end")
    demo.add_argument("-c", "--config", metavar="FILE", help="the demo configuration (default: built in)")
    demo.add_argument("--question", metavar="TEXT", default=None, help="what the demo caller says")
    demo.add_argument("--out", metavar="DIR", default=None, help="where recordings and transcripts go")
    demo.add_argument("--order", metavar="DIGITS", default=None,
                      help="the order number the demo caller keys in when asked (default 7721; 1234 is known too)")

    local = sub.add_parser("local-realtime", help="serve the offline Realtime-compatible backend alone")
    local.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT")
    local.add_argument("-c", "--config", metavar="FILE", help="config whose realtime.local section is the brain")
    local.add_argument("--lead-ms", type=int, default=100, metavar="MS",
                       help="how far ahead of real time response audio is sent (the real API sends it faster "
                            "than it plays; default 100)")
    local.add_argument("--token", metavar="TOKEN", default=None,
                       help="bearer token every client must send (default: $SIPAGENT_LOCAL_TOKEN, which "
                            "other users cannot see in the process list); required off loopback")
    local.add_argument("--max-sessions", type=int, default=64, metavar="N",
                       help="sessions served at once; more are refused with HTTP 503 (default 64)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    try:
        if args.command == "check":
            return _check(args.config, args.connect)
        if args.command == "run":
            return _run(load_config(args.config))
        if args.command == "call":
            return _call(args.config, args.target, args.profile, args.var)
        if args.command == "demo":
            return _demo(args.config, args.question, args.out, args.order)
        if args.command == "local-realtime":
            token = args.token or os.environ.get("SIPAGENT_LOCAL_TOKEN") or None
            return _local_realtime(args.listen, args.config, args.lead_ms, token, args.max_sessions)
    except ConfigError as exc:
        print(f"sipagent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SipagentError as exc:
        print(f"sipagent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_USAGE


def _check(path: str, connect: bool) -> int:
    from sipagent.doctor import describe_recording, describe_trust

    config = load_config(path)
    print(config.summary())
    trust, problems = describe_trust(config)
    print(trust)
    shortage = rtp_port_shortage(config)
    if shortage is not None:
        problems.append(shortage)
    # Trust problems are warnings: the unit file runs `check` before every start, and a DNS hiccup at boot
    # must not keep the agent down (it fails closed on such a host, and says so in its log). An unwritable
    # recording directory is a fixed mistake in the set-up: it fails the check.
    for problem in problems:
        print(f"sipagent: warning: {problem}", file=sys.stderr)
    recording, recording_problems = describe_recording(config)
    print(recording)
    for problem in recording_problems:
        print(f"sipagent: {problem}", file=sys.stderr)
    if recording_problems:
        return EXIT_FAILURE
    if connect:
        from sipagent.doctor import run_doctor

        return EXIT_OK if run_doctor(config) else EXIT_FAILURE
    # Say it when there were warnings: "OK" alone under a name that does not resolve reads as all clear.
    print(f"configuration OK, with {len(problems)} warning{'s' if len(problems) > 1 else ''} (above)" if problems
          else "configuration OK")
    return EXIT_OK


def _run(config: Config) -> int:
    from sipagent.agent import run_agent

    return run_agent(config)


def _outcome_codes() -> list[tuple[str, int]]:
    from sipagent.outbound.one_call import EXIT_CODES

    return [(outcome, code) for outcome, code in EXIT_CODES.items() if code]


def parse_vars(items: Sequence[str]) -> dict[str, str]:
    """``--var key=value`` arguments as a mapping; ValueError for one without "=" or a key given twice."""
    variables: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f'--var {item[:40]}: expected KEY=VALUE')
        if key in variables:
            raise ValueError(f"--var {key[:40]}: given twice")
        variables[key] = value
    return variables


def _call(path: str, target: str, profile: str | None, var_items: Sequence[str]) -> int:
    from sipagent.outbound.one_call import build_request, exit_code, place_one_call

    config = load_config(path)
    try:
        variables = parse_vars(var_items)
        build_request(config, target, profile, variables)  # checked before anything starts
    except ValueError as exc:
        print(f"sipagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    call = place_one_call(config, target, profile, variables)
    amd = f", answering machine: {call.answering_machine}" if call.answering_machine else ""
    left = ", message left" if call.message_left else ""
    reason = f" ({call.end_reason})" if call.end_reason else ""
    print(f"{call.request.to}: {call.outcome}{amd}{left}{reason}")
    return exit_code(call)


def _demo(path: str | None, question: str | None, out: str | None, order: str | None) -> int:
    from sipagent.demo import run_demo

    return run_demo(path, question, out, order)


def _local_realtime(
    listen: str, path: str | None, lead_ms: int = 100, token: str | None = None, max_sessions: int = 64
) -> int:
    from sipagent.agent import run_loop
    from sipagent.demo import load_demo_config
    from sipagent.observability.logs import configure_logging
    from sipagent.realtime.local.brain import LocalBrainConfig
    from sipagent.realtime.local.server import serve

    # Without -c, the brain is the demo's (a retail support line).
    config = load_config(path) if path else load_demo_config(None, None)
    configure_logging("info", "text", secrets=[token] if token else [])  # the token is never printed
    brain = LocalBrainConfig.from_mapping(config.realtime.local)
    try:
        run_loop(serve(listen, brain, lead_ms, token=token, max_sessions=max_sessions))
    except KeyboardInterrupt:
        return EXIT_OK
    except ValueError as exc:
        raise ConfigError(str(exc), key="--listen") from None
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
