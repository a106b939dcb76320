"""`delineate proxy render PROFILE [--out DIR]` and `delineate proxy check PROFILE [--json]`.

Outside a checkout (an installed wheel, the Docker image) the profiles are the packaged copy
and `render` has no proxy/ to write into, so `--out` is required there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.proxy import budget, kubernetes, render
from service.proxy.profiles import PROFILES_FILE, PROXY_DIR, Pods, Profile, ProfileError, load_profile


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `proxy` and its two subcommands on the main parser."""
    proxy = sub.add_parser("proxy", help="render and check proxy configs from proxy/profiles.toml")
    commands = proxy.add_subparsers(dest="proxy_command", required=True)
    for name, help_text in (
        ("render", "write the profile's configs (default: into proxy/, the checked-in files)"),
        ("check", "check the profile's timeout budget across layers; exit 1 on violations"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("profile", help="a profile name in proxy/profiles.toml (nginx, alb, ...)")
        command.add_argument("--profiles", type=Path, default=PROFILES_FILE, help=argparse.SUPPRESS)
        if name == "check":
            command.add_argument(
                "--json", action="store_true", help="print the budget and findings as one JSON object"
            )
            command.add_argument(
                "--manifests",
                type=argparse.FileType("r"),
                metavar="FILE",
                help="Kubernetes profiles: judge the values these rendered objects carry "
                "(`kubectl kustomize OVERLAY`, - for stdin) instead of the profile's",
            )
        if name == "render":
            command.add_argument(
                "--out", type=Path, default=PROXY_DIR, help="output directory (required outside a checkout)"
            )


def run(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile, args.profiles)
    except ProfileError as exc:
        print(f"delineate proxy: {exc}", file=sys.stderr)
        return 2
    if args.proxy_command == "render":
        if args.out is None:
            print("delineate proxy render: --out DIR is required outside a checkout", file=sys.stderr)
            return 2
        for path in render.write(profile, args.out):
            print(f"wrote {path}")
        return 0
    pods = None
    if args.manifests:
        try:
            profile, pods = kubernetes.judged(profile, args.manifests.read())
        except ValueError as exc:
            print(f"delineate proxy check: {exc}", file=sys.stderr)
            return 2
    findings = budget.check(profile, pods)
    violations = sum(1 for finding in findings if finding.severity == "violation")
    if args.json:
        print(json.dumps(_report(profile, pods, findings, violations), indent=2))
        return 1 if violations else 0
    rows = budget.budget_rows(profile, pods)
    width = max(len(name) for name, _ in rows)
    print(f"profile {profile.name}: {profile.description}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for finding in findings:
        print(f"{finding.severity}: {finding.sentence}")
    print(f"{violations} violation(s)" if violations else "budget ok")
    return 1 if violations else 0


def _report(
    profile: Profile, pods: Pods | None, findings: list[budget.Finding], violations: int
) -> dict[str, object]:
    """`check --json`: what the text output says, for CI jobs and scripts to read, plus the
    profile's raw numbers (the budget rows are display strings with units)."""
    return {
        "profile": profile.name,
        "description": profile.description,
        "ok": violations == 0,
        "violations": violations,
        "findings": [
            {"severity": finding.severity, "rule": finding.rule, "sentence": finding.sentence}
            for finding in findings
        ],
        "budget": [{"setting": name, "value": value} for name, value in budget.budget_rows(profile, pods)],
        "values": profile.model_dump(mode="json", exclude={"name", "description"}),
    }
